-- Schema Registry (Confluent-compatible), used where no Confluent Schema Registry runs.
--
-- A schema is identified globally by its type plus a normalized form (see
-- services/schema-registry/src/schema.rs); the same schema under any subject keeps one id.
-- Subjects own numbered versions that point at schema ids. Soft-deleted versions keep their
-- number, so a re-registered schema gets a new version and numbers are never reused.

CREATE TABLE schema_registry_schemas (
    -- Confluent's wire format carries the id as a 4-byte big-endian int: a positive int4.
    id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schema_type     text        NOT NULL,
    -- The text exactly as first registered; returned to clients unchanged.
    schema          text        NOT NULL,
    -- The normalized form the fingerprint is computed over (identity, not for clients).
    canonical_form  text        NOT NULL,
    -- sha256 hex of schema_type and canonical_form. Unique so replicas racing to register
    -- the same schema converge on one row (INSERT ... ON CONFLICT DO NOTHING).
    fingerprint     text        NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE schema_registry_subject_versions (
    subject     text        NOT NULL,
    version     integer     NOT NULL CHECK (version > 0),
    schema_id   integer     NOT NULL REFERENCES schema_registry_schemas (id),
    deleted     boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, version)
);

-- A schema is registered at most once per live subject: registering it again returns the
-- existing version. Backstop for the per-subject advisory lock taken when allocating versions.
CREATE UNIQUE INDEX schema_registry_subject_versions_live_schema
    ON schema_registry_subject_versions (subject, schema_id)
    WHERE NOT deleted;

CREATE INDEX schema_registry_subject_versions_schema_id
    ON schema_registry_subject_versions (schema_id);
