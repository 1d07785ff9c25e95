-- Operators' dead-letter replays, counted durably per dead-letter topic and event: the replay
-- limit holds however many times the same dead letter (or another dead letter of the same
-- event) is replayed, which a count carried only in the replayed record's headers cannot do.
CREATE TABLE dlq_replays (
    dlq_topic        text        NOT NULL,
    event_id         uuid        NOT NULL,
    replays          integer     NOT NULL,
    last_replayed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, event_id)
);
