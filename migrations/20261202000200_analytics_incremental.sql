-- Analytics by delta: each batch adds its newly recorded facts to their windows in one
-- statement instead of recomputing every window from all its payments.
--
-- - revision: bumped by every update of the window, under its row lock; the record produced for
--   the window carries it, so the compacted topic's records of a key are ordered by it.
-- - latency_sketch: a mergeable log-bucket histogram of the latencies ({"<bucket>": count},
--   bucket = ceil(ln(ms) / ln(1.01 / 0.99)) + 1, 0 for 0 ms or less; see the analytics
--   service's sketch module), merged by adding counts; p50/p95/p99 are read from it.
-- - latency_min_ms / latency_max_ms: exact extremes, which clamp the quantiles.

ALTER TABLE analytics_windows
    ADD COLUMN revision       bigint NOT NULL DEFAULT 0,
    ADD COLUMN latency_sketch jsonb  NOT NULL DEFAULT '{}',
    ADD COLUMN latency_min_ms bigint,
    ADD COLUMN latency_max_ms bigint;

-- Adds two {key: number} objects key by key (failure reasons, sketch buckets).
CREATE FUNCTION analytics_jsonb_add(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(key, total), '{}'::jsonb)
    FROM (
        SELECT key, sum(value::bigint) AS total
        FROM (SELECT * FROM jsonb_each_text(a) UNION ALL SELECT * FROM jsonb_each_text(b)) AS both_
        GROUP BY key
    ) AS sums
$$;

-- The windows of days whose facts are still kept get their sketch from them, so the next delta
-- merges into the full distribution. Windows of pruned days are sealed and never updated again.
WITH latencies AS (
    SELECT merchant_id, currency, requested_at,
           round(extract(epoch FROM decided_at - requested_at) * 1000)::bigint AS ms
    FROM analytics_payments
    WHERE decided_at IS NOT NULL
), sketches AS (
    SELECT w.merchant_id, w.currency, w.granularity, w.window_start,
           jsonb_object_agg(b.bucket, b.n) AS sketch, min(b.lo) AS lo, max(b.hi) AS hi
    FROM analytics_windows w
    CROSS JOIN LATERAL (
        SELECT CASE WHEN l.ms <= 0 THEN 0
                    ELSE ceil(ln(l.ms::float8) / ln(1.01::float8 / 0.99::float8))::int + 1 END AS bucket,
               count(*) AS n, min(l.ms) AS lo, max(l.ms) AS hi
        FROM latencies l
        WHERE l.merchant_id = w.merchant_id AND l.currency = w.currency
          AND l.requested_at >= w.window_start AND l.requested_at < w.window_end
        GROUP BY 1
    ) AS b
    GROUP BY w.merchant_id, w.currency, w.granularity, w.window_start
)
UPDATE analytics_windows w
SET latency_sketch = s.sketch, latency_min_ms = s.lo, latency_max_ms = s.hi
FROM sketches s
WHERE (w.merchant_id, w.currency, w.granularity, w.window_start)
    = (s.merchant_id, s.currency, s.granularity, s.window_start);
