//! The embedded metadata backend: SQLite in WAL mode through sqlx.
//!
//! One writer connection (a pool of one, every transaction `BEGIN
//! IMMEDIATE`, so the write lock is taken up front and two processes on the
//! same file queue instead of deadlocking on a lock upgrade) and a pool of
//! readers, which WAL lets run beside the writer. `synchronous = FULL`: a
//! commit is on disk before it is acknowledged.
//!
//! The pools hand out connections without the ping sqlx sends by default
//! before each one: a SQLite connection lives in this process and no peer
//! can drop it, so the ping was only a round trip to the connection's
//! thread on every acquire. Under the benchmark's eight creations in
//! flight that was about 0.14 ms of each group commit's `BEGIN`, while the
//! other creations waited for the write lock (BENCHMARKS.md).

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row as _, Sqlite, SqlitePool, TypeInfo, ValueRef};

use super::conn::{Conn, Flavor};
use super::sql::{self, Arg, Cell, SqlConn, SqlDriver, SqlMetadata, SqlTxConn, anonymous};
use super::{LeaderGuard, MetaError};

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
    (5, include_str!("../../migrations/sqlite/0005_tiers.sql")),
    (
        6,
        include_str!("../../migrations/sqlite/0006_manifests.sql"),
    ),
];

const READERS: u32 = 8;
/// The writer's page cache, in KiB (negative: SQLite's unit for a size).
/// Writes land in random places of the indexes (package ids, digests); with
/// SQLite's default 2 MiB most of them read their page back from the
/// kernel. 32 MiB, for the one writer only, took `views rebuild` of 1M
/// events from 57 s to 46 s; the readers keep the default.
const WRITER_CACHE: &str = "-32768";
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the checkpointer copies committed pages from the WAL into the
/// database file (see [`Checkpointer`]).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// The WAL size, in pages, at which a commit checkpoints by itself (1,000
/// by default): the backstop that keeps the WAL bounded (see
/// [`Checkpointer`] for why a steady load reaches it).
const WAL_BACKSTOP_PAGES: &str = "16384";

impl Flavor for Sqlite {
    fn bind<'q>(
        q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
        arg: &Arg,
    ) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
        match arg {
            Arg::Int(v) => q.bind(*v),
            Arg::Text(v) => q.bind(v.clone()),
            Arg::Bytes(v) => q.bind(v.clone()),
        }
    }

    fn cell(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Cell, MetaError> {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            return Ok(Cell::Null);
        }
        // SQLite types values, not columns: this is the value's own type.
        Ok(match raw.type_info().name() {
            "INTEGER" => Cell::Int(row.try_get(i)?),
            "TEXT" => Cell::Text(row.try_get(i)?),
            "BLOB" => Cell::Bytes(row.try_get(i)?),
            other => {
                return Err(MetaError::Corrupt(format!(
                    "column {i} has unexpected type {other}"
                )));
            }
        })
    }

    /// Parameters made anonymous where they can be: binding numbered ones
    /// costs a walk of the statement's parameter names each ([`anonymous`]).
    fn sql(sql: &str, args: usize) -> Cow<'_, str> {
        anonymous(sql, args).map_or(Cow::Borrowed(sql), Cow::Owned)
    }

    fn rows_affected(done: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    const MANY_STATEMENTS_PER_QUERY: bool = true;
}

#[derive(Debug)]
struct SqliteDriver {
    writer: SqlitePool,
    reader: SqlitePool,
    _checkpointer: Checkpointer,
    /// The database file, beside which leader locks live.
    path: std::path::PathBuf,
    /// For a scratch store: its directory, removed with the driver.
    _scratch_dir: Option<tempfile::TempDir>,
}

/// Opens (creating if needed) the database named by a `sqlite://` url and
/// applies pending migrations.
pub async fn open(url: &str) -> Result<SqlMetadata, MetaError> {
    if !url.starts_with("sqlite:") {
        return Err(MetaError::UnsupportedUrl(url.to_owned()));
    }
    open_with(SqliteConnectOptions::from_str(url)?, None).await
}

/// Opens (creating if needed) the database file at `path`.
pub async fn open_path(path: &std::path::Path) -> Result<SqlMetadata, MetaError> {
    open_with(SqliteConnectOptions::new().filename(path), None).await
}

async fn open_with(
    options: SqliteConnectOptions,
    scratch_dir: Option<tempfile::TempDir>,
) -> Result<SqlMetadata, MetaError> {
    let path = options.get_filename().to_path_buf();
    let base = options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(
            base.clone()
                .create_if_missing(true)
                .pragma("cache_size", WRITER_CACHE)
                .pragma("wal_autocheckpoint", WAL_BACKSTOP_PAGES),
        )
        .await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(READERS)
        .test_before_acquire(false)
        .connect_with(base.clone().read_only(true))
        .await?;
    let checkpointer = Checkpointer::start(
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base)
            .await?,
    );
    let driver = SqliteDriver {
        writer,
        reader,
        _checkpointer: checkpointer,
        path,
        _scratch_dir: scratch_dir,
    };
    let mut tx = driver.begin_write().await?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, \
         applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP) STRICT",
        &[],
    )
    .await?;
    sql::migrate(&mut *tx, MIGRATIONS).await?;
    tx.commit().await?;
    Ok(SqlMetadata::new(Arc::new(driver)))
}

/// Copies committed pages from the WAL into the database file, off the
/// commit path.
///
/// By default the connection whose commit brings the WAL to 1,000 pages
/// copies them back before its `COMMIT` returns: every few dozen commits
/// one took 5–6 ms instead of about 1, and a group commit's every caller
/// waited for it. Here a connection of its own runs a passive checkpoint
/// every [`CHECKPOINT_EVERY`], beside the writer (a passive checkpoint
/// waits for no reader or writer). Durability does not change: a commit is
/// on disk once the WAL is synced, whoever copies it later. The commit's
/// own checkpoint stays as a backstop at [`WAL_BACKSTOP_PAGES`]. A write
/// starts the WAL over only when every frame in it has been copied, which
/// under a steady load, with commits landing while the checkpointer copies,
/// is rarely so until the writer's own checkpoint at the backstop: the WAL
/// file grows to about 64 MiB (measured: 67.7 MB after 5,000 creations),
/// and that checkpoint finds most pages copied already.
#[derive(Debug)]
struct Checkpointer(tokio::task::AbortHandle);

impl Checkpointer {
    fn start(pool: SqlitePool) -> Checkpointer {
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(CHECKPOINT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&pool)
                    .await
                {
                    // The backstop keeps the WAL bounded meanwhile.
                    tracing::warn!(error = %e, "SQLite checkpoint failed");
                }
            }
        });
        Checkpointer(task.abort_handle())
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl SqlDriver for SqliteDriver {
    async fn reader(&self) -> Result<Box<dyn SqlConn>, MetaError> {
        Ok(Box::new(Conn::<Sqlite, _>::new(
            self.reader.acquire().await?,
        )))
    }

    async fn writer(&self) -> Result<Box<dyn SqlConn>, MetaError> {
        Ok(Box::new(Conn::<Sqlite, _>::new(
            self.writer.acquire().await?,
        )))
    }

    async fn snapshot(&self) -> Result<Box<dyn SqlTxConn>, MetaError> {
        // A read transaction in WAL mode sees one snapshot throughout.
        Ok(Box::new(Conn::new(self.reader.begin().await?)))
    }

    async fn begin_write(&self) -> Result<Box<dyn SqlTxConn>, MetaError> {
        Ok(Box::new(Conn::new(
            self.writer.begin_with("BEGIN IMMEDIATE").await?,
        )))
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

    /// Drops the tables and creates them again from their own rows in
    /// `sqlite_master`, so the schema stays the migrations' alone.
    ///
    /// Why not `DELETE`: on a table that foreign keys name, SQLite deletes
    /// row by row, updating every index and checking every reference (34 s
    /// of a 74 s rebuild of 1M events went there). A table that no foreign
    /// key names is dropped page by page without reading its rows, and
    /// dropping the children first leaves the parents unnamed. DDL is
    /// transactional here: until commit, readers see the old tables.
    async fn empty_tables(
        &self,
        tx: &mut dyn SqlConn,
        tables: &[&'static str],
    ) -> Result<(), MetaError> {
        let marks = (1..=tables.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let args: Vec<Arg> = tables.iter().map(|t| (*t).into()).collect();
        // Tables before their indexes; automatic indexes have no SQL.
        let schema = tx
            .fetch(
                &format!(
                    "SELECT type, tbl_name, sql FROM sqlite_master \
                     WHERE tbl_name IN ({marks}) AND sql IS NOT NULL \
                     ORDER BY type = 'index', rowid"
                ),
                &args,
            )
            .await?;
        let schema = schema
            .iter()
            .map(|r| Ok((r.text("type")?, r.text("tbl_name")?, r.text("sql")?)))
            .collect::<Result<Vec<_>, MetaError>>()?;
        let mut creates = Vec::with_capacity(schema.len());
        for table in tables {
            let own: Vec<_> = schema.iter().filter(|(_, t, _)| t == table).collect();
            if own.first().is_none_or(|(kind, _, _)| kind != "table") {
                return Err(MetaError::Corrupt(format!(
                    "no table {table} in the schema"
                )));
            }
            creates.extend(own.into_iter().map(|(_, _, sql)| sql.as_str()));
        }
        for table in tables.iter().rev() {
            tx.execute(&format!("DROP TABLE {table}"), &[]).await?;
        }
        for sql in creates {
            tx.execute(sql, &[]).await?;
        }
        Ok(())
    }

    async fn scratch(&self) -> Result<SqlMetadata, MetaError> {
        let dir = tempfile::tempdir()
            .map_err(|e| MetaError::Corrupt(format!("cannot create a scratch directory: {e}")))?;
        let options = SqliteConnectOptions::new().filename(dir.path().join("scratch.sqlite"));
        open_with(options, Some(dir)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Statements reach SQLite with anonymous parameters wherever binding
    /// in order binds the same values, and unchanged elsewhere.
    #[test]
    fn parameters_numbered_in_order_are_made_anonymous() {
        assert_eq!(
            <Sqlite as Flavor>::sql("INSERT INTO t VALUES (?1, ?2), (?3, ?4)", 4),
            "INSERT INTO t VALUES (?, ?), (?, ?)"
        );
        for kept in ["UPDATE t SET a = ?2, b = ?1", "SELECT ?1 WHERE ?1 > 0"] {
            assert!(matches!(<Sqlite as Flavor>::sql(kept, 2), Cow::Borrowed(s) if s == kept));
        }
    }

    /// The migrations' pages reach the database file while the store is
    /// open: the writer's own checkpoint, at the backstop, would not have
    /// run yet, so only the checkpointer copies them.
    #[tokio::test]
    async fn the_checkpointer_copies_committed_pages_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.sqlite");
        let meta = open_path(&path).await.unwrap();
        let len = || std::fs::metadata(&path).unwrap().len();
        let wal = std::fs::metadata(dir.path().join("meta.sqlite-wal"))
            .unwrap()
            .len();
        assert!(
            wal > 8 * 4096,
            "the migrations wrote only {wal} bytes of WAL"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while len() < 8 * 4096 {
            assert!(
                Instant::now() < deadline,
                "after 10 s the database file holds {} bytes",
                len()
            );
            tokio::time::sleep(CHECKPOINT_EVERY / 4).await;
        }
        drop(meta);
    }
}
