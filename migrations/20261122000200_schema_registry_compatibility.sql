-- Schema Registry: compatibility configuration and the identity scheme of stored schemas.

-- Compatibility levels: one global row (subject '', which no real subject can be) and one
-- row per subject that has its own level. No global row means Confluent's default, BACKWARD.
CREATE TABLE schema_registry_config (
    subject        text        PRIMARY KEY,
    compatibility  text        NOT NULL CHECK (compatibility IN (
        'NONE', 'BACKWARD', 'BACKWARD_TRANSITIVE', 'FORWARD', 'FORWARD_TRANSITIVE',
        'FULL', 'FULL_TRANSITIVE')),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Which identity rules computed canonical_form and fingerprint (services/schema-registry
-- src/schema.rs IDENTITY_SCHEME). Rows of an older scheme are re-keyed by the registry at
-- start-up, so a schema registered before an upgrade keeps its id.
ALTER TABLE schema_registry_schemas
    ADD COLUMN identity_scheme smallint NOT NULL DEFAULT 1;
