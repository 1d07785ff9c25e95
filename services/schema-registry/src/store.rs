//! Postgres persistence: schemas (global ids), subject versions and compatibility levels.
//!
//! Safe with several replicas on one database: a schema row is created with
//! `INSERT ... ON CONFLICT DO NOTHING` on its unique fingerprint, and versions of a subject are
//! allocated, compatibility-checked and deleted under a per-subject `pg_advisory_xact_lock`, so
//! two replicas cannot both register against the same "latest". Tables are created by
//! `migrations/20261122000002_schema_registry.sql` and
//! `migrations/20261122000200_schema_registry_compatibility.sql`.

use sqlx::{PgPool, Postgres, Transaction};

use crate::compatibility::Level;
use crate::schema::{subject_lock_key, ParsedSchema, SchemaType, VersionSpec, IDENTITY_SCHEME};

/// The `schema_registry_config` row holding the global level (no subject is empty).
const GLOBAL_SCOPE: &str = "";

/// A schema as stored: its id, type and the text as first registered.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredSchema {
    pub id: i32,
    pub schema_type: String,
    pub schema: String,
}

/// One version of a subject and the schema it points at.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    pub schema_type: String,
    pub schema: String,
}

/// The outcome of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub id: i32,
    pub version: i32,
    /// False when the subject already had this schema and nothing was written.
    pub new_version: bool,
}

/// The outcome of a registration attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    Registered(Registered),
    /// The compatibility check's messages; nothing was written.
    Incompatible(Vec<String>),
}

/// What deleting one version found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionDeleteOutcome {
    Deleted(i32),
    SubjectNotFound,
    VersionNotFound(i32),
    /// Soft delete of a version that is soft-deleted already.
    AlreadySoftDeleted(i32),
    /// Permanent delete of a version that is still live.
    NotSoftDeleted(i32),
}

/// What re-keying schemas stored under older identity rules did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdentityUpgrade {
    pub rekeyed: usize,
    /// Rows whose new identity another (older) row already holds: they keep their id, so
    /// records written with it still decode, but new registrations resolve to the older row.
    pub superseded: usize,
}

/// Which subjects or versions a listing shows (`?deleted=true`, `?deletedOnly=true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Live,
    WithDeleted,
    DeletedOnly,
}

impl Listing {
    fn as_sql(self) -> &'static str {
        match self {
            Listing::Live => "live",
            Listing::WithDeleted => "all",
            Listing::DeletedOnly => "deleted",
        }
    }
}

/// What a soft or permanent subject delete found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The versions deleted, ascending.
    Versions(Vec<i32>),
    SubjectNotFound,
    /// Soft delete of a subject whose versions are all soft-deleted already.
    AlreadySoftDeleted,
    /// Permanent delete of a subject that still has live versions.
    NotSoftDeleted,
}

const VERSION_COLUMNS: &str = "v.subject, v.version, s.id, s.schema_type, s.schema \
     FROM schema_registry_subject_versions v \
     JOIN schema_registry_schemas s ON s.id = v.schema_id";

#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Registers `schema` under `subject`: the schema's global id (existing or new) and the
    /// subject's version for it (existing, or the next number). A schema new to the subject is
    /// first passed to `check` with the subject's effective level and its live versions,
    /// oldest first; messages from it refuse the registration and nothing is written.
    pub async fn register<F>(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        check: F,
    ) -> Result<RegisterOutcome, sqlx::Error>
    where
        F: FnOnce(Level, &[SubjectVersion]) -> Vec<String>,
    {
        let mut tx = self.pool.begin().await?;
        // Schema row first, subject lock second, in every transaction: a transaction holding
        // a subject lock never waits on another's uncommitted schema row, so no deadlock.
        let id = upsert_schema(&mut tx, schema).await?;
        lock_subject(&mut tx, subject).await?;
        // Under the lock, each statement's snapshot sees every version committed before it.
        let existing: Option<i32> = sqlx::query_scalar(
            "SELECT version FROM schema_registry_subject_versions \
             WHERE subject = $1 AND schema_id = $2 AND NOT deleted",
        )
        .bind(subject)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(version) = existing {
            return Ok(RegisterOutcome::Registered(Registered {
                id,
                version,
                new_version: false,
            }));
        }
        let level = effective_level(&mut tx, subject).await?;
        let live: Vec<SubjectVersion> = sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} WHERE v.subject = $1 AND NOT v.deleted ORDER BY v.version"
        ))
        .bind(subject)
        .fetch_all(&mut *tx)
        .await?;
        let messages = check(level, &live);
        if !messages.is_empty() {
            // Dropping the transaction rolls back a schema row inserted above.
            return Ok(RegisterOutcome::Incompatible(messages));
        }
        // Soft-deleted versions count: a number is never handed out twice.
        let version: i32 = sqlx::query_scalar(
            "INSERT INTO schema_registry_subject_versions (subject, version, schema_id) \
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2 \
             FROM schema_registry_subject_versions WHERE subject = $1 \
             RETURNING version",
        )
        .bind(subject)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RegisterOutcome::Registered(Registered {
            id,
            version,
            new_version: true,
        }))
    }

    /// The live versions of `subject`, oldest first (what compatibility is checked against).
    pub async fn live_versions(&self, subject: &str) -> Result<Vec<SubjectVersion>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} WHERE v.subject = $1 AND NOT v.deleted ORDER BY v.version"
        ))
        .bind(subject)
        .fetch_all(&self.pool)
        .await
    }

    /// The level that applies to `subject`: its own, else the global one, else BACKWARD.
    pub async fn effective_level(&self, subject: &str) -> Result<Level, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        effective_level(&mut conn, subject).await
    }

    /// The global level, if one was set (`None`: the default applies).
    pub async fn global_level(&self) -> Result<Option<Level>, sqlx::Error> {
        self.configured_level(GLOBAL_SCOPE).await
    }

    /// The subject's own level, if one was set.
    pub async fn subject_level(&self, subject: &str) -> Result<Option<Level>, sqlx::Error> {
        self.configured_level(subject).await
    }

    async fn configured_level(&self, scope: &str) -> Result<Option<Level>, sqlx::Error> {
        let raw: Option<String> = sqlx::query_scalar(
            "SELECT compatibility FROM schema_registry_config WHERE subject = $1",
        )
        .bind(scope)
        .fetch_optional(&self.pool)
        .await?;
        Ok(raw.as_deref().and_then(Level::parse))
    }

    pub async fn set_global_level(&self, level: Level) -> Result<(), sqlx::Error> {
        self.set_level(GLOBAL_SCOPE, level).await
    }

    /// Sets the subject's level; the subject need not exist yet (as in Confluent).
    pub async fn set_subject_level(&self, subject: &str, level: Level) -> Result<(), sqlx::Error> {
        self.set_level(subject, level).await
    }

    async fn set_level(&self, scope: &str, level: Level) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO schema_registry_config (subject, compatibility) VALUES ($1, $2) \
             ON CONFLICT (subject) DO UPDATE \
             SET compatibility = EXCLUDED.compatibility, updated_at = now()",
        )
        .bind(scope)
        .bind(level.as_str())
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Removes the global level (back to the default); returns what it was.
    pub async fn delete_global_level(&self) -> Result<Option<Level>, sqlx::Error> {
        self.delete_level(GLOBAL_SCOPE).await
    }

    /// Removes the subject's own level; returns what it was.
    pub async fn delete_subject_level(&self, subject: &str) -> Result<Option<Level>, sqlx::Error> {
        self.delete_level(subject).await
    }

    async fn delete_level(&self, scope: &str) -> Result<Option<Level>, sqlx::Error> {
        let raw: Option<String> = sqlx::query_scalar(
            "DELETE FROM schema_registry_config WHERE subject = $1 RETURNING compatibility",
        )
        .bind(scope)
        .fetch_optional(&self.pool)
        .await?;
        Ok(raw.as_deref().and_then(Level::parse))
    }

    /// The version of `subject` holding `schema`, if any (the newest, when deleted ones count).
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        include_deleted: bool,
    ) -> Result<Option<SubjectVersion>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} \
             WHERE v.subject = $1 AND s.fingerprint = $2 AND (NOT v.deleted OR $3) \
             ORDER BY v.version DESC LIMIT 1"
        ))
        .bind(subject)
        .bind(&schema.fingerprint)
        .bind(include_deleted)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn subject_exists(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM schema_registry_subject_versions \
             WHERE subject = $1 AND (NOT deleted OR $2))",
        )
        .bind(subject)
        .bind(include_deleted)
        .fetch_one(&self.pool)
        .await
    }

    pub async fn schema_by_id(&self, id: i32) -> Result<Option<StoredSchema>, sqlx::Error> {
        sqlx::query_as("SELECT id, schema_type, schema FROM schema_registry_schemas WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// The (subject, version) pairs pointing at schema `id`.
    pub async fn versions_of_schema(
        &self,
        id: i32,
        include_deleted: bool,
    ) -> Result<Vec<(String, i32)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT subject, version FROM schema_registry_subject_versions \
             WHERE schema_id = $1 AND (NOT deleted OR $2) ORDER BY subject, version",
        )
        .bind(id)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await
    }

    /// Subjects starting with `prefix`, sorted. A subject is live while one of its versions
    /// is, soft-deleted once all are.
    pub async fn subjects(
        &self,
        listing: Listing,
        prefix: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT subject FROM schema_registry_subject_versions \
             WHERE starts_with(subject, $1) GROUP BY subject \
             HAVING CASE $2 WHEN 'live' THEN bool_or(NOT deleted) \
                            WHEN 'deleted' THEN NOT bool_or(NOT deleted) ELSE true END \
             ORDER BY subject",
        )
        .bind(prefix)
        .bind(listing.as_sql())
        .fetch_all(&self.pool)
        .await
    }

    /// The version numbers of `subject`, ascending; empty when the subject does not exist.
    pub async fn versions(&self, subject: &str, listing: Listing) -> Result<Vec<i32>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT version FROM schema_registry_subject_versions \
             WHERE subject = $1 AND CASE $2 WHEN 'live' THEN NOT deleted \
                                            WHEN 'deleted' THEN deleted ELSE true END \
             ORDER BY version",
        )
        .bind(subject)
        .bind(listing.as_sql())
        .fetch_all(&self.pool)
        .await
    }

    pub async fn version(
        &self,
        subject: &str,
        version: VersionSpec,
        include_deleted: bool,
    ) -> Result<Option<SubjectVersion>, sqlx::Error> {
        let number = match version {
            VersionSpec::Latest => None,
            VersionSpec::Number(n) => Some(n),
        };
        sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} \
             WHERE v.subject = $1 AND ($2::integer IS NULL OR v.version = $2) \
               AND (NOT v.deleted OR $3) \
             ORDER BY v.version DESC LIMIT 1"
        ))
        .bind(subject)
        .bind(number)
        .bind(include_deleted)
        .fetch_optional(&self.pool)
        .await
    }

    /// Marks every live version of `subject` deleted. Schema ids stay resolvable, so records
    /// already written with them can still be decoded.
    pub async fn soft_delete_subject(&self, subject: &str) -> Result<DeleteOutcome, sqlx::Error> {
        let mut versions: Vec<i32> = sqlx::query_scalar(
            "UPDATE schema_registry_subject_versions SET deleted = true \
             WHERE subject = $1 AND NOT deleted RETURNING version",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        if !versions.is_empty() {
            versions.sort_unstable();
            return Ok(DeleteOutcome::Versions(versions));
        }
        Ok(if self.subject_exists(subject, true).await? {
            DeleteOutcome::AlreadySoftDeleted
        } else {
            DeleteOutcome::SubjectNotFound
        })
    }

    /// Removes the soft-deleted versions of `subject`; refused while live versions remain
    /// (Confluent's rule). Schema rows are kept: their ids may still be in Kafka records.
    pub async fn hard_delete_subject(&self, subject: &str) -> Result<DeleteOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        lock_subject(&mut tx, subject).await?;
        let live: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM schema_registry_subject_versions \
             WHERE subject = $1 AND NOT deleted)",
        )
        .bind(subject)
        .fetch_one(&mut *tx)
        .await?;
        if live {
            return Ok(DeleteOutcome::NotSoftDeleted);
        }
        let mut versions: Vec<i32> = sqlx::query_scalar(
            "DELETE FROM schema_registry_subject_versions WHERE subject = $1 RETURNING version",
        )
        .bind(subject)
        .fetch_all(&mut *tx)
        .await?;
        if versions.is_empty() {
            return Ok(DeleteOutcome::SubjectNotFound);
        }
        // A permanently deleted subject takes its own level with it, as in Confluent.
        sqlx::query("DELETE FROM schema_registry_config WHERE subject = $1")
            .bind(subject)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        versions.sort_unstable();
        Ok(DeleteOutcome::Versions(versions))
    }

    /// Soft-deletes one version (`latest`: the newest live one). Its schema id stays
    /// resolvable; the version no longer counts for compatibility.
    pub async fn soft_delete_version(
        &self,
        subject: &str,
        version: VersionSpec,
    ) -> Result<VersionDeleteOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        lock_subject(&mut tx, subject).await?;
        let Some((number, deleted)) = find_version_row(&mut tx, subject, version, false).await?
        else {
            return version_missing(&mut tx, subject, version).await;
        };
        if deleted {
            return Ok(VersionDeleteOutcome::AlreadySoftDeleted(number));
        }
        sqlx::query(
            "UPDATE schema_registry_subject_versions SET deleted = true \
             WHERE subject = $1 AND version = $2",
        )
        .bind(subject)
        .bind(number)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(VersionDeleteOutcome::Deleted(number))
    }

    /// Removes one soft-deleted version (`latest`: the newest version, deleted or not).
    pub async fn hard_delete_version(
        &self,
        subject: &str,
        version: VersionSpec,
    ) -> Result<VersionDeleteOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        lock_subject(&mut tx, subject).await?;
        let Some((number, deleted)) = find_version_row(&mut tx, subject, version, true).await?
        else {
            return version_missing(&mut tx, subject, version).await;
        };
        if !deleted {
            return Ok(VersionDeleteOutcome::NotSoftDeleted(number));
        }
        sqlx::query(
            "DELETE FROM schema_registry_subject_versions WHERE subject = $1 AND version = $2",
        )
        .bind(subject)
        .bind(number)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(VersionDeleteOutcome::Deleted(number))
    }

    /// Re-keys schemas stored under older identity rules (see [`IDENTITY_SCHEME`]), oldest id
    /// first, so a schema registered before an upgrade keeps its id when registered again.
    /// Replicas starting together queue on one advisory lock; the work is done once.
    pub async fn upgrade_identities(&self) -> Result<IdentityUpgrade, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(subject_lock_key("\0identity-upgrade"))
            .execute(&mut *tx)
            .await?;
        let rows: Vec<StoredSchema> = sqlx::query_as(
            "SELECT id, schema_type, schema FROM schema_registry_schemas \
             WHERE identity_scheme < $1 ORDER BY id",
        )
        .bind(IDENTITY_SCHEME)
        .fetch_all(&mut *tx)
        .await?;
        let mut outcome = IdentityUpgrade::default();
        for row in rows {
            let parsed = SchemaType::parse(Some(&row.schema_type))
                .and_then(|t| ParsedSchema::parse(t, &row.schema));
            let parsed = match parsed {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(schema.id = row.id, error = %e, "stored schema no longer parses; left as is");
                    continue;
                }
            };
            let updated = sqlx::query(
                "UPDATE schema_registry_schemas \
                 SET fingerprint = $2, canonical_form = $3, identity_scheme = $4 \
                 WHERE id = $1 AND NOT EXISTS \
                   (SELECT 1 FROM schema_registry_schemas WHERE fingerprint = $2)",
            )
            .bind(row.id)
            .bind(&parsed.fingerprint)
            .bind(&parsed.canonical_form)
            .bind(IDENTITY_SCHEME)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 1 {
                outcome.rekeyed += 1;
            } else {
                outcome.superseded += 1;
            }
        }
        tx.commit().await?;
        Ok(outcome)
    }

    /// Whether the database answers, for readiness.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
}

async fn lock_subject(
    tx: &mut Transaction<'_, Postgres>,
    subject: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(subject_lock_key(subject))
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

async fn effective_level(
    conn: &mut sqlx::PgConnection,
    subject: &str,
) -> Result<Level, sqlx::Error> {
    // The subject's own row sorts first (false < true).
    let raw: Option<String> = sqlx::query_scalar(
        "SELECT compatibility FROM schema_registry_config WHERE subject IN ($1, $2) \
         ORDER BY subject = $2 LIMIT 1",
    )
    .bind(subject)
    .bind(GLOBAL_SCOPE)
    .fetch_optional(conn)
    .await?;
    Ok(raw.as_deref().and_then(Level::parse).unwrap_or_default())
}

/// The number and deleted flag of the version `spec` names. `latest` is the newest live
/// version, or the newest of all when `include_deleted`.
async fn find_version_row(
    tx: &mut Transaction<'_, Postgres>,
    subject: &str,
    spec: VersionSpec,
    include_deleted: bool,
) -> Result<Option<(i32, bool)>, sqlx::Error> {
    let number = match spec {
        VersionSpec::Latest => None,
        VersionSpec::Number(n) => Some(n),
    };
    sqlx::query_as(
        "SELECT version, deleted FROM schema_registry_subject_versions \
         WHERE subject = $1 AND ($2::integer IS NOT NULL OR NOT deleted OR $3) \
           AND ($2::integer IS NULL OR version = $2) \
         ORDER BY version DESC LIMIT 1",
    )
    .bind(subject)
    .bind(number)
    .bind(include_deleted)
    .fetch_optional(&mut **tx)
    .await
}

/// Why no version matched: an unknown subject, or an unknown version of a known one.
async fn version_missing(
    tx: &mut Transaction<'_, Postgres>,
    subject: &str,
    spec: VersionSpec,
) -> Result<VersionDeleteOutcome, sqlx::Error> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM schema_registry_subject_versions WHERE subject = $1)",
    )
    .bind(subject)
    .fetch_one(&mut **tx)
    .await?;
    Ok(match spec {
        VersionSpec::Number(n) if exists => VersionDeleteOutcome::VersionNotFound(n),
        _ => VersionDeleteOutcome::SubjectNotFound,
    })
}

/// The id of `schema`, inserting it if new. Looks up first so re-registering an existing
/// schema does not consume a sequence value; a replica racing on the same new schema loses
/// the `ON CONFLICT` and reads the winner's row.
async fn upsert_schema(
    tx: &mut Transaction<'_, Postgres>,
    schema: &ParsedSchema,
) -> Result<i32, sqlx::Error> {
    let select = "SELECT id FROM schema_registry_schemas WHERE fingerprint = $1";
    if let Some(id) = sqlx::query_scalar(select)
        .bind(&schema.fingerprint)
        .fetch_optional(&mut **tx)
        .await?
    {
        return Ok(id);
    }
    let inserted: Option<i32> = sqlx::query_scalar(
        "INSERT INTO schema_registry_schemas \
             (schema_type, schema, canonical_form, fingerprint, identity_scheme) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
    )
    .bind(schema.schema_type.as_str())
    .bind(&schema.text)
    .bind(&schema.canonical_form)
    .bind(&schema.fingerprint)
    .bind(IDENTITY_SCHEME)
    .fetch_optional(&mut **tx)
    .await?;
    match inserted {
        Some(id) => Ok(id),
        // Read committed: this statement's snapshot includes the row that won the conflict.
        None => {
            sqlx::query_scalar(select)
                .bind(&schema.fingerprint)
                .fetch_one(&mut **tx)
                .await
        }
    }
}
