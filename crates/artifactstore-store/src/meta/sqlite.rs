//! The embedded metadata backend: SQLite in WAL mode through sqlx.
//!
//! One writer connection (a pool of one, every transaction `BEGIN
//! IMMEDIATE`, so the write lock is taken up front and two processes on the
//! same file queue instead of deadlocking on a lock upgrade) and a pool of
//! readers, which WAL lets run beside the writer. `synchronous = FULL`: a
//! commit is on disk before it is acknowledged.

use std::str::FromStr;
use std::time::Duration;

use artifactstore_core::event::{Event, EventData, EventDraft, Hash};
use artifactstore_core::manifest::Manifest;
use artifactstore_core::{Algorithm, BlobId, Digest, Timestamp};
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::{
    BlobRecord, Deletion, Hold, LeaderGuard, MetaError, MetaTx, MetadataStore, PackageFile,
    PackageFilter, PackageRecord, Release, RetentionState, StoredEvent, UploadSession, ViewsDigest,
};

/// Embedded migrations, applied in order, each once, in one transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../migrations/sqlite/0001_log_and_blobs.sql"),
    ),
    (2, include_str!("../../migrations/sqlite/0002_packages.sql")),
    (3, include_str!("../../migrations/sqlite/0003_holds.sql")),
    (
        4,
        include_str!("../../migrations/sqlite/0004_collection.sql"),
    ),
];

const READERS: u32 = 8;
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct SqliteMetadata {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The database file, beside which leader locks live.
    path: std::path::PathBuf,
    /// For a scratch store: its directory, removed when the last clone goes.
    _scratch_dir: Option<std::sync::Arc<tempfile::TempDir>>,
}

impl SqliteMetadata {
    /// Opens (creating if needed) the database named by a `sqlite://` url and
    /// applies pending migrations.
    pub async fn open(url: &str) -> Result<SqliteMetadata, MetaError> {
        if !url.starts_with("sqlite:") {
            return Err(MetaError::UnsupportedUrl(url.to_owned()));
        }
        SqliteMetadata::open_with(SqliteConnectOptions::from_str(url)?).await
    }

    /// Opens (creating if needed) the database file at `path`.
    pub async fn open_path(path: &std::path::Path) -> Result<SqliteMetadata, MetaError> {
        SqliteMetadata::open_with(SqliteConnectOptions::new().filename(path)).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<SqliteMetadata, MetaError> {
        let path = options.get_filename().to_path_buf();
        let base = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone().create_if_missing(true))
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(base.read_only(true))
            .await?;
        let db = SqliteMetadata {
            writer,
            reader,
            path,
            _scratch_dir: None,
        };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), MetaError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP) STRICT")
            .execute(&mut *tx)
            .await?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&mut *tx)
                .await?;
        for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            let step = async {
                sqlx::raw_sql(sql).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO schema_migrations (version) VALUES (?)")
                    .bind(version)
                    .execute(&mut *tx)
                    .await
            };
            step.await
                .map_err(|source| MetaError::Migration { version, source })?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn u64_col(row: &SqliteRow, col: &str) -> Result<u64, MetaError> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| MetaError::Corrupt(format!("negative {col}")))
}

fn hash_col(row: &SqliteRow, col: &str) -> Result<Hash, MetaError> {
    let v: Vec<u8> = row.try_get(col)?;
    v.try_into()
        .map_err(|_| MetaError::Corrupt(format!("{col} is not 32 bytes")))
}

fn ts_col(row: &SqliteRow, col: &str) -> Result<Timestamp, MetaError> {
    let v: String = row.try_get(col)?;
    v.parse()
        .map_err(|_| MetaError::Corrupt(format!("{col} is not a timestamp: {v}")))
}

fn blob_record(row: &SqliteRow) -> Result<BlobRecord, MetaError> {
    Ok(BlobRecord {
        blob: BlobId {
            sha256: hash_col(row, "sha256")?,
            blake3: hash_col(row, "blake3")?,
            size: u64_col(row, "size")?,
        },
        location: row.try_get("location")?,
        stored_seq: u64_col(row, "stored_seq")?,
        stored_at: ts_col(row, "stored_at")?,
    })
}

fn hold_record(row: &SqliteRow) -> Result<Hold, MetaError> {
    let released = match opt_ts_col(row, "released_at")? {
        None => None,
        Some(at) => Some(Release {
            by: row
                .try_get::<Option<String>, _>("released_by")?
                .unwrap_or_default(),
            at,
            reason: row
                .try_get::<Option<String>, _>("release_reason")?
                .unwrap_or_default(),
        }),
    };
    Ok(Hold {
        hold_id: row.try_get("hold_id")?,
        reason: row.try_get("reason")?,
        applied_by: row.try_get("applied_by")?,
        applied_at: ts_col(row, "applied_at")?,
        released,
    })
}

async fn find_package(
    conn: &mut SqliteConnection,
    id: &str,
) -> Result<Option<PackageRecord>, MetaError> {
    let sql = sqlx::AssertSqlSafe(format!("{PACKAGE_SELECT} WHERE p.id = ?"));
    let row = sqlx::query(sql).bind(id).fetch_optional(conn).await?;
    row.as_ref().map(package_record).transpose()
}

async fn find_hold(
    conn: &mut SqliteConnection,
    package_id: &str,
    hold_id: &str,
) -> Result<Option<Hold>, MetaError> {
    let row = sqlx::query("SELECT * FROM holds WHERE package_id = ? AND hold_id = ?")
        .bind(package_id)
        .bind(hold_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(hold_record).transpose()
}

/// Up to `limit` packages whose `retention_state` row matches `condition`
/// (SQL with one `?` for `now`, then its ORDER BY), chosen by an index on
/// that table, so the work follows what is due, not the store's size.
async fn packages_by_retention(
    conn: &mut SqliteConnection,
    condition: &'static str,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<PackageRecord>, MetaError> {
    let sql = sqlx::AssertSqlSafe(format!(
        "{PACKAGE_SELECT} WHERE r.package_id IN (SELECT package_id FROM retention_state \
         WHERE {condition} LIMIT ?) ORDER BY p.created_seq"
    ));
    let rows = sqlx::query(sql)
        .bind(now.to_string())
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await?;
    rows.iter().map(package_record).collect()
}

/// Runs an UPDATE that must change exactly one row of a package's views.
async fn update_one(
    conn: &mut SqliteConnection,
    event: &Event,
    query: sqlx::query::Query<'_, Sqlite, sqlx::sqlite::SqliteArguments>,
) -> Result<(), MetaError> {
    let done = query.execute(conn).await?;
    if done.rows_affected() != 1 {
        return Err(MetaError::Corrupt(format!(
            "{} at seq {} does not apply to the views of {}",
            event.type_name(),
            event.seq(),
            event.subject()
        )));
    }
    Ok(())
}

fn session_record(row: &SqliteRow) -> Result<UploadSession, MetaError> {
    Ok(UploadSession {
        id: row.try_get("id")?,
        created_at: ts_col(row, "created_at")?,
        actor: row.try_get("actor")?,
    })
}

fn stored_event(row: &SqliteRow) -> Result<StoredEvent, MetaError> {
    Ok(StoredEvent {
        seq: u64_col(row, "seq")?,
        bytes: row.try_get("body")?,
        hash: hash_col(row, "hash")?,
    })
}

fn i64_of(n: u64) -> Result<i64, MetaError> {
    i64::try_from(n)
        .map_err(|_| MetaError::Corrupt(format!("{n} exceeds the database integer range")))
}

async fn find_blob(
    conn: &mut SqliteConnection,
    digest: &Digest,
) -> Result<Option<BlobRecord>, MetaError> {
    let sql = match digest.algorithm() {
        Algorithm::Sha256 => "SELECT * FROM blobs WHERE sha256 = ?",
        Algorithm::Blake3 => "SELECT * FROM blobs WHERE blake3 = ?",
    };
    let row = sqlx::query(sql)
        .bind(&digest.bytes()[..])
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(blob_record).transpose()
}

fn opt_ts_col(row: &SqliteRow, col: &str) -> Result<Option<Timestamp>, MetaError> {
    let v: Option<String> = row.try_get(col)?;
    v.map(|v| {
        v.parse()
            .map_err(|_| MetaError::Corrupt(format!("{col} is not a timestamp: {v}")))
    })
    .transpose()
}

const PACKAGE_SELECT: &str = "SELECT p.*, r.class AS r_class, r.current_expires_at, r.active_holds, \
     r.eligible_for_deletion, r.last_eligibility_seq, r.deleted_seq, r.deleted_at, r.deleted_reason, \
     r.bytes_freed \
     FROM packages p JOIN retention_state r ON r.package_id = p.id";

fn package_record(row: &SqliteRow) -> Result<PackageRecord, MetaError> {
    let last: Option<i64> = row.try_get("last_eligibility_seq")?;
    Ok(PackageRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        manifest_sha256: hash_col(row, "manifest_sha256")?,
        manifest_blake3: hash_col(row, "manifest_blake3")?,
        file_count: u64_col(row, "file_count")?,
        total_size: u64_col(row, "total_size")?,
        retention_class: row.try_get("retention_class")?,
        created_seq: u64_col(row, "created_seq")?,
        created_at: ts_col(row, "created_at")?,
        created_by: row.try_get("created_by")?,
        retention: RetentionState {
            class: row.try_get("r_class")?,
            current_expires_at: opt_ts_col(row, "current_expires_at")?,
            active_holds: u64_col(row, "active_holds")?,
            eligible_for_deletion: row.try_get::<i64, _>("eligible_for_deletion")? != 0,
            last_eligibility_seq: last.map(|n| n as u64),
            deleted: deletion(row)?,
        },
    })
}

fn deletion(row: &SqliteRow) -> Result<Option<Deletion>, MetaError> {
    let Some(seq) = row.try_get::<Option<i64>, _>("deleted_seq")? else {
        return Ok(None);
    };
    let corrupt = || MetaError::Corrupt("incomplete deletion columns".into());
    Ok(Some(Deletion {
        seq: u64::try_from(seq).map_err(|_| corrupt())?,
        at: opt_ts_col(row, "deleted_at")?.ok_or_else(corrupt)?,
        reason: row
            .try_get::<Option<String>, _>("deleted_reason")?
            .ok_or_else(corrupt)?,
        bytes_freed: row
            .try_get::<Option<i64>, _>("bytes_freed")?
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(corrupt)?,
    }))
}

/// The views and the order their rows are hashed in (their primary keys).
const VIEWS: &[(&str, &str)] = &[
    ("blobs", "SELECT * FROM blobs ORDER BY sha256"),
    ("packages", "SELECT * FROM packages ORDER BY id"),
    (
        "package_files",
        "SELECT * FROM package_files ORDER BY package_id, path",
    ),
    (
        "retention_state",
        "SELECT * FROM retention_state ORDER BY package_id",
    ),
    ("holds", "SELECT * FROM holds ORDER BY package_id, hold_id"),
];

/// A row as a canonical CBOR array of its column values, for hashing.
fn row_value(row: &SqliteRow) -> Result<artifactstore_core::cbor::Value, MetaError> {
    use artifactstore_core::cbor::Value;
    use sqlx::{Column, TypeInfo, ValueRef};
    let mut cells = Vec::with_capacity(row.columns().len());
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        let cell = if raw.is_null() {
            Value::Null
        } else {
            match raw.type_info().name() {
                "INTEGER" => Value::int(row.try_get::<i64, _>(i)?),
                "TEXT" => Value::Text(row.try_get(i)?),
                "BLOB" => Value::Bytes(row.try_get(i)?),
                other => {
                    return Err(MetaError::Corrupt(format!(
                        "column {} has unexpected type {other}",
                        col.name()
                    )));
                }
            }
        };
        cells.push(cell);
    }
    Ok(Value::Array(cells))
}

/// Applies one event to the views. Appends and rebuilds both come here.
async fn apply(
    conn: &mut SqliteConnection,
    event: &Event,
    manifest: Option<&Manifest>,
) -> Result<(), MetaError> {
    if manifest.is_some() && !matches!(event.data(), EventData::PackageCreated { .. }) {
        return Err(MetaError::Corrupt(format!(
            "a manifest was given with {}",
            event.type_name()
        )));
    }
    match event.data() {
        EventData::BlobStored { blob, location } => {
            sqlx::query("INSERT INTO blobs (sha256, blake3, size, location, stored_seq, stored_at) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(&blob.sha256[..])
                .bind(&blob.blake3[..])
                .bind(i64_of(blob.size)?)
                .bind(location)
                .bind(i64_of(event.seq())?)
                .bind(event.at().to_string())
                .execute(&mut *conn)
                .await?;
        }
        EventData::BlobDeleted { blob } => {
            let q = sqlx::query("DELETE FROM blobs WHERE sha256 = ? AND blake3 = ?")
                .bind(&blob.sha256[..])
                .bind(&blob.blake3[..]);
            update_one(conn, event, q).await?;
        }
        EventData::PackageDeleted {
            reason,
            bytes_freed,
        } => {
            let q = sqlx::query(
                "UPDATE retention_state SET deleted_seq = ?, deleted_at = ?, deleted_reason = ?, bytes_freed = ? \
                 WHERE package_id = ? AND deleted_seq IS NULL",
            )
            .bind(i64_of(event.seq())?)
            .bind(event.at().to_string())
            .bind(reason)
            .bind(i64_of(*bytes_freed)?)
            .bind(event.subject());
            update_one(conn, event, q).await?;
            sqlx::query("DELETE FROM package_files WHERE package_id = ?")
                .bind(event.subject())
                .execute(&mut *conn)
                .await?;
        }
        EventData::PackageCreated {
            name,
            manifest_sha256,
            manifest_blake3,
            file_count,
            total_size,
            retention_class,
        } => {
            let m = manifest.ok_or_else(|| {
                MetaError::Corrupt(format!(
                    "package {} applied without its manifest",
                    event.subject()
                ))
            })?;
            let id = BlobId::of(&m.to_canonical_bytes());
            let consistent = id.sha256 == *manifest_sha256
                && id.blake3 == *manifest_blake3
                && m.name() == name
                && m.files().len() as u64 == *file_count
                && m.total_size() == *total_size;
            if !consistent {
                return Err(MetaError::Corrupt(format!(
                    "package {}: the manifest does not match its event",
                    event.subject()
                )));
            }
            sqlx::query(
                "INSERT INTO packages (id, name, manifest_sha256, manifest_blake3, file_count, total_size, \
                 retention_class, created_seq, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(event.subject())
            .bind(name)
            .bind(&manifest_sha256[..])
            .bind(&manifest_blake3[..])
            .bind(i64_of(*file_count)?)
            .bind(i64_of(*total_size)?)
            .bind(retention_class)
            .bind(i64_of(event.seq())?)
            .bind(event.at().to_string())
            .bind(event.actor())
            .execute(&mut *conn)
            .await?;
            for f in m.files() {
                sqlx::query(
                    "INSERT INTO package_files (package_id, path, sha256, blake3, size, media_type) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(event.subject())
                .bind(&f.path)
                .bind(&f.blob.sha256[..])
                .bind(&f.blob.blake3[..])
                .bind(i64_of(f.blob.size)?)
                .bind(f.media_type.as_deref())
                .execute(&mut *conn)
                .await?;
            }
        }
        EventData::RetentionDefaultApplied { class, expires_at } => {
            sqlx::query("INSERT INTO retention_state (package_id, class, current_expires_at) VALUES (?, ?, ?)")
                .bind(event.subject())
                .bind(class)
                .bind(expires_at.map(|t| t.to_string()))
                .execute(&mut *conn)
                .await?;
        }
        EventData::RetentionExtended { new_expires_at, .. } => {
            let q = sqlx::query(
                "UPDATE retention_state SET current_expires_at = ?, eligible_for_deletion = 0 WHERE package_id = ?",
            )
            .bind(new_expires_at.to_string())
            .bind(event.subject());
            update_one(conn, event, q).await?;
        }
        EventData::RetentionHoldApplied { hold_id, reason } => {
            sqlx::query(
                "INSERT INTO holds (package_id, hold_id, reason, applied_by, applied_at, applied_seq) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(event.subject())
            .bind(hold_id)
            .bind(reason)
            .bind(event.actor())
            .bind(event.at().to_string())
            .bind(i64_of(event.seq())?)
            .execute(&mut *conn)
            .await?;
            let q = sqlx::query(
                "UPDATE retention_state SET active_holds = active_holds + 1, eligible_for_deletion = 0 \
                 WHERE package_id = ?",
            )
            .bind(event.subject());
            update_one(conn, event, q).await?;
        }
        EventData::RetentionHoldReleased { hold_id, reason } => {
            let q = sqlx::query(
                "UPDATE holds SET released_by = ?, released_at = ?, release_reason = ?, released_seq = ? \
                 WHERE package_id = ? AND hold_id = ? AND released_seq IS NULL",
            )
            .bind(event.actor())
            .bind(event.at().to_string())
            .bind(reason)
            .bind(i64_of(event.seq())?)
            .bind(event.subject())
            .bind(hold_id);
            update_one(conn, event, q).await?;
            let q = sqlx::query(
                "UPDATE retention_state SET active_holds = active_holds - 1 WHERE package_id = ? AND active_holds > 0",
            )
            .bind(event.subject());
            update_one(conn, event, q).await?;
        }
        EventData::RetentionDeletionEligible { .. } => {
            let q = sqlx::query(
                "UPDATE retention_state SET eligible_for_deletion = 1, last_eligibility_seq = ? WHERE package_id = ?",
            )
            .bind(i64_of(event.seq())?)
            .bind(event.subject());
            update_one(conn, event, q).await?;
        }
    }
    sqlx::query("UPDATE views_state SET applied_seq = ? WHERE id = 1")
        .bind(i64_of(event.seq())?)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[async_trait]
impl MetadataStore for SqliteMetadata {
    async fn begin(&self) -> Result<Box<dyn MetaTx>, MetaError> {
        let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Box::new(SqliteTx { tx }))
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetaError> {
        let mut conn = self.reader.acquire().await?;
        find_blob(&mut conn, digest).await
    }

    async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<StoredEvent>, MetaError> {
        let rows =
            sqlx::query("SELECT seq, body, hash FROM events WHERE seq > ? ORDER BY seq LIMIT ?")
                .bind(i64_of(after)?)
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
        rows.iter().map(stored_event).collect()
    }

    async fn head(&self) -> Result<(u64, Hash), MetaError> {
        let row = sqlx::query("SELECT seq, hash FROM log_head WHERE id = 1")
            .fetch_one(&self.reader)
            .await?;
        Ok((u64_col(&row, "seq")?, hash_col(&row, "hash")?))
    }

    async fn package(&self, id: &str) -> Result<Option<PackageRecord>, MetaError> {
        let mut conn = self.reader.acquire().await?;
        find_package(&mut conn, id).await
    }

    async fn holds(&self, package_id: &str) -> Result<Vec<Hold>, MetaError> {
        let rows = sqlx::query("SELECT * FROM holds WHERE package_id = ? ORDER BY applied_seq")
            .bind(package_id)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(hold_record).collect()
    }

    async fn events_of(
        &self,
        subject: &str,
        type_prefix: &str,
    ) -> Result<Vec<StoredEvent>, MetaError> {
        // GLOB, not LIKE: '_' in a prefix must be literal.
        let pattern = format!("{}*", type_prefix.replace(['*', '?', '['], ""));
        let rows = sqlx::query(
            "SELECT seq, body, hash FROM events WHERE subject = ? AND type GLOB ? ORDER BY seq",
        )
        .bind(subject)
        .bind(pattern)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(stored_event).collect()
    }

    async fn packages(
        &self,
        filter: &PackageFilter,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<PackageRecord>, MetaError> {
        let mut q = sqlx::QueryBuilder::<Sqlite>::new(PACKAGE_SELECT);
        q.push(" WHERE p.created_seq > ")
            .push_bind(i64_of(after_seq)?);
        if let Some(name) = &filter.name {
            q.push(" AND p.name = ").push_bind(name.clone());
        }
        if let Some(class) = &filter.retention_class {
            q.push(" AND p.retention_class = ").push_bind(class.clone());
        }
        if let Some(eligible) = filter.eligible {
            q.push(" AND r.eligible_for_deletion = ")
                .push_bind(i64::from(eligible));
        }
        match filter.deleted {
            Some(true) => q.push(" AND r.deleted_seq IS NOT NULL"),
            Some(false) => q.push(" AND r.deleted_seq IS NULL"),
            None => &mut q,
        };
        q.push(" ORDER BY p.created_seq LIMIT ")
            .push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.reader).await?;
        rows.iter().map(package_record).collect()
    }

    async fn package_file(
        &self,
        package_id: &str,
        path: &str,
    ) -> Result<Option<PackageFile>, MetaError> {
        let row = sqlx::query("SELECT * FROM package_files WHERE package_id = ? AND path = ?")
            .bind(package_id)
            .bind(path)
            .fetch_optional(&self.reader)
            .await?;
        row.map(|row| {
            Ok(PackageFile {
                path: row.try_get("path")?,
                blob: BlobId {
                    sha256: hash_col(&row, "sha256")?,
                    blake3: hash_col(&row, "blake3")?,
                    size: u64_col(&row, "size")?,
                },
                media_type: row.try_get("media_type")?,
            })
        })
        .transpose()
    }

    async fn session_insert(&self, s: &UploadSession) -> Result<(), MetaError> {
        sqlx::query("INSERT INTO upload_sessions (id, created_at, actor) VALUES (?, ?, ?)")
            .bind(&s.id)
            .bind(s.created_at.to_string())
            .bind(&s.actor)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn session_get(&self, id: &str) -> Result<Option<UploadSession>, MetaError> {
        let row = sqlx::query("SELECT id, created_at, actor FROM upload_sessions WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(session_record).transpose()
    }

    async fn session_delete(&self, id: &str) -> Result<bool, MetaError> {
        let done = sqlx::query("DELETE FROM upload_sessions WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn blobs_after(&self, after: &Hash, limit: u32) -> Result<Vec<BlobRecord>, MetaError> {
        let rows = sqlx::query("SELECT * FROM blobs WHERE sha256 > ? ORDER BY sha256 LIMIT ?")
            .bind(&after[..])
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(blob_record).collect()
    }

    async fn views_digest(&self) -> Result<ViewsDigest, MetaError> {
        use futures::TryStreamExt;
        // One read transaction: every view from the same WAL snapshot.
        let mut tx = self.reader.begin().await?;
        let applied: i64 = sqlx::query_scalar("SELECT applied_seq FROM views_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let mut tables = Vec::with_capacity(VIEWS.len());
        for &(name, sql) in VIEWS {
            let mut hasher = blake3::Hasher::new();
            let mut rows = 0u64;
            let mut stream = sqlx::query(sql).fetch(&mut *tx);
            while let Some(row) = stream.try_next().await? {
                hasher.update(&row_value(&row)?.to_canonical_bytes());
                rows += 1;
            }
            drop(stream);
            tables.push((name, rows, *hasher.finalize().as_bytes()));
        }
        tx.commit().await?;
        Ok(ViewsDigest {
            applied_seq: applied as u64,
            tables,
        })
    }

    async fn scratch(&self) -> Result<Box<dyn MetadataStore>, MetaError> {
        let dir = tempfile::tempdir()
            .map_err(|e| MetaError::Corrupt(format!("cannot create a scratch directory: {e}")))?;
        let mut db = SqliteMetadata::open_path(&dir.path().join("scratch.sqlite")).await?;
        db._scratch_dir = Some(std::sync::Arc::new(dir));
        Ok(Box::new(db))
    }

    async fn ping(&self) -> Result<(), MetaError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    /// An advisory lock (`flock`) on a file beside the database: every
    /// process that can open this SQLite database shares its filesystem, and
    /// the kernel drops the lock when its holder exits, however it exits.
    async fn try_lead(&self, role: &str) -> Result<Option<LeaderGuard>, MetaError> {
        let mut name = self.path.clone().into_os_string();
        name.push(format!("-{role}.lock"));
        let role = role.to_owned();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&name)?;
            match file.try_lock() {
                Ok(()) => Ok(Some(LeaderGuard::new(file))),
                Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                Err(std::fs::TryLockError::Error(e)) => Err(e),
            }
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| MetaError::Lock { role, source })
    }

    async fn sessions_before(
        &self,
        cutoff: Timestamp,
        limit: u32,
    ) -> Result<Vec<UploadSession>, MetaError> {
        let rows = sqlx::query(
            "SELECT id, created_at, actor FROM upload_sessions WHERE created_at < ? \
             ORDER BY created_at LIMIT ?",
        )
        .bind(cutoff.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(session_record).collect()
    }
}

#[derive(Debug)]
struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
}

#[async_trait]
impl MetaTx for SqliteTx {
    async fn blob(&mut self, digest: &Digest) -> Result<Option<BlobRecord>, MetaError> {
        find_blob(&mut self.tx, digest).await
    }

    async fn append(
        &mut self,
        draft: EventDraft,
        manifest: Option<&Manifest>,
    ) -> Result<Event, MetaError> {
        let head = sqlx::query("SELECT seq, hash FROM log_head WHERE id = 1")
            .fetch_one(&mut *self.tx)
            .await?;
        let event = draft.seal(u64_col(&head, "seq")? + 1, hash_col(&head, "hash")?);
        let seq = i64_of(event.seq())?;
        sqlx::query("INSERT INTO events (seq, id, type, subject, at, body, hash) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(seq)
            .bind(event.id())
            .bind(event.type_name())
            .bind(event.subject())
            .bind(event.at().to_string())
            .bind(event.canonical_bytes())
            .bind(&event.hash()[..])
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("UPDATE log_head SET seq = ?, hash = ? WHERE id = 1")
            .bind(seq)
            .bind(&event.hash()[..])
            .execute(&mut *self.tx)
            .await?;
        apply(&mut self.tx, &event, manifest).await?;
        Ok(event)
    }

    async fn events_after(
        &mut self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, MetaError> {
        let rows =
            sqlx::query("SELECT seq, body, hash FROM events WHERE seq > ? ORDER BY seq LIMIT ?")
                .bind(i64_of(after)?)
                .bind(i64::from(limit))
                .fetch_all(&mut *self.tx)
                .await?;
        rows.iter().map(stored_event).collect()
    }

    async fn package(&mut self, id: &str) -> Result<Option<PackageRecord>, MetaError> {
        find_package(&mut self.tx, id).await
    }

    async fn hold(&mut self, package_id: &str, hold_id: &str) -> Result<Option<Hold>, MetaError> {
        find_hold(&mut self.tx, package_id, hold_id).await
    }

    async fn due_for_eligibility(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<PackageRecord>, MetaError> {
        let due = "current_expires_at IS NOT NULL AND eligible_for_deletion = 0 \
             AND current_expires_at <= ? AND active_holds = 0 ORDER BY current_expires_at";
        packages_by_retention(&mut self.tx, due, now, limit).await
    }

    async fn reset_views(&mut self) -> Result<(), MetaError> {
        // Children before parents, for the foreign keys.
        for sql in [
            "DELETE FROM package_files",
            "DELETE FROM holds",
            "DELETE FROM retention_state",
            "DELETE FROM packages",
            "DELETE FROM blobs",
            "UPDATE views_state SET applied_seq = 0 WHERE id = 1",
        ] {
            sqlx::query(sql).execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    async fn replay(
        &mut self,
        event: &Event,
        manifest: Option<&Manifest>,
    ) -> Result<(), MetaError> {
        apply(&mut self.tx, event, manifest).await
    }

    async fn session_delete(&mut self, id: &str) -> Result<(), MetaError> {
        sqlx::query("DELETE FROM upload_sessions WHERE id = ?")
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), MetaError> {
        self.tx.commit().await?;
        Ok(())
    }

    async fn collectable_packages(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<PackageRecord>, MetaError> {
        let collectable = "eligible_for_deletion = 1 AND deleted_seq IS NULL \
             AND active_holds = 0 AND current_expires_at <= ? ORDER BY package_id";
        packages_by_retention(&mut self.tx, collectable, now, limit).await
    }

    async fn exclusive_bytes(&mut self, package_id: &str) -> Result<u64, MetaError> {
        let bytes: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(size), 0) FROM (SELECT DISTINCT f.sha256, f.size FROM package_files f \
             WHERE f.package_id = ?1 \
             AND NOT EXISTS (SELECT 1 FROM package_files g WHERE g.sha256 = f.sha256 AND g.package_id <> ?1) \
             AND NOT EXISTS (SELECT 1 FROM packages p WHERE p.manifest_sha256 = f.sha256))",
        )
        .bind(package_id)
        .fetch_one(&mut *self.tx)
        .await?;
        u64::try_from(bytes).map_err(|_| MetaError::Corrupt("negative blob sizes".into()))
    }

    async fn unreferenced_blobs(
        &mut self,
        cutoff: Timestamp,
        after: &Hash,
        limit: u32,
    ) -> Result<Vec<BlobRecord>, MetaError> {
        let rows = sqlx::query(
            "SELECT b.* FROM blobs b WHERE b.sha256 > ? AND b.stored_at <= ? \
             AND NOT EXISTS (SELECT 1 FROM package_files f WHERE f.sha256 = b.sha256) \
             AND NOT EXISTS (SELECT 1 FROM packages p WHERE p.manifest_sha256 = b.sha256) \
             ORDER BY b.sha256 LIMIT ?",
        )
        .bind(&after[..])
        .bind(cutoff.to_string())
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(blob_record).collect()
    }

    async fn known_locations(
        &mut self,
        locations: &[String],
    ) -> Result<std::collections::HashSet<String>, MetaError> {
        if locations.is_empty() {
            return Ok(Default::default());
        }
        let mut q =
            sqlx::QueryBuilder::<Sqlite>::new("SELECT location FROM blobs WHERE location IN (");
        let mut list = q.separated(", ");
        for l in locations {
            list.push_bind(l.clone());
        }
        q.push(")");
        let rows = q.build().fetch_all(&mut *self.tx).await?;
        rows.iter()
            .map(|r| r.try_get("location").map_err(MetaError::from))
            .collect()
    }

    async fn blob_at(&mut self, location: &str) -> Result<Option<BlobRecord>, MetaError> {
        let row = sqlx::query("SELECT * FROM blobs WHERE location = ?")
            .bind(location)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(blob_record).transpose()
    }
}
