//! Postgres persistence: schemas (global ids) and subject versions.
//!
//! Safe with several replicas on one database: a schema row is created with
//! `INSERT ... ON CONFLICT DO NOTHING` on its unique fingerprint, and versions of a subject are
//! allocated under a per-subject `pg_advisory_xact_lock`. Tables are created by
//! `migrations/20261122000002_schema_registry.sql`.

use sqlx::{PgPool, Postgres, Transaction};

use crate::schema::{subject_lock_key, ParsedSchema, VersionSpec};

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
    /// subject's version for it (existing, or the next number).
    pub async fn register(
        &self,
        subject: &str,
        schema: &ParsedSchema,
    ) -> Result<Registered, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Schema row first, subject lock second, in every transaction: a transaction holding
        // a subject lock never waits on another's uncommitted schema row, so no deadlock.
        let id = upsert_schema(&mut tx, schema).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(subject_lock_key(subject))
            .execute(&mut *tx)
            .await?;
        // Under the lock, each statement's snapshot sees every version committed before it.
        let existing: Option<i32> = sqlx::query_scalar(
            "SELECT version FROM schema_registry_subject_versions \
             WHERE subject = $1 AND schema_id = $2 AND NOT deleted",
        )
        .bind(subject)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let registered = match existing {
            Some(version) => Registered {
                id,
                version,
                new_version: false,
            },
            None => {
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
                Registered {
                    id,
                    version,
                    new_version: true,
                }
            }
        };
        tx.commit().await?;
        Ok(registered)
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

    pub async fn subjects(&self, include_deleted: bool) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT DISTINCT subject FROM schema_registry_subject_versions \
             WHERE NOT deleted OR $1 ORDER BY subject",
        )
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await
    }

    /// The version numbers of `subject`, ascending; empty when the subject does not exist.
    pub async fn versions(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<i32>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT version FROM schema_registry_subject_versions \
             WHERE subject = $1 AND (NOT deleted OR $2) ORDER BY version",
        )
        .bind(subject)
        .bind(include_deleted)
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
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(subject_lock_key(subject))
            .execute(&mut *tx)
            .await?;
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
        tx.commit().await?;
        if versions.is_empty() {
            return Ok(DeleteOutcome::SubjectNotFound);
        }
        versions.sort_unstable();
        Ok(DeleteOutcome::Versions(versions))
    }

    /// Whether the database answers, for readiness.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }
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
        "INSERT INTO schema_registry_schemas (schema_type, schema, canonical_form, fingerprint) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
    )
    .bind(schema.schema_type.as_str())
    .bind(&schema.text)
    .bind(&schema.canonical_form)
    .bind(&schema.fingerprint)
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
