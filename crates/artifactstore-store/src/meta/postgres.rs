//! The scale-out metadata backend: PostgreSQL through sqlx.
//!
//! Any number of processes share one database. Every write transaction
//! starts by locking the one `log_head` row (`SELECT … FOR UPDATE`), so
//! writers from all nodes queue on that row exactly as SQLite writers queue
//! on its file lock: `seq` is taken from the head under the lock and is
//! gapless and totally ordered across nodes, and every decision the engine
//! takes inside a write transaction (the collector's, the sweeper's, a
//! package's reference check) sees everything committed before it. A
//! database sequence is never used: its values become visible out of order.
//!
//! Leader locks are session-level advisory locks, each on a connection of
//! its own that the guard keeps open; PostgreSQL releases them when that
//! connection ends, also when its process dies.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row as _, TypeInfo, ValueRef};

use super::conn::{Conn, Flavor};
use super::sql::{self, Arg, Cell, SqlConn, SqlDriver, SqlMetadata, SqlTxConn};
use super::{LeaderGuard, MetaError};

/// Migrations of this backend, applied in order, each once. The schema is
/// the SQLite one in PostgreSQL's types, with the same columns in the same
/// order, so both give the same [`super::ViewsDigest`] for the same log.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_schema.sql")),
    (2, include_str!("../../migrations/postgres/0002_tiers.sql")),
    (
        3,
        include_str!("../../migrations/postgres/0003_manifests.sql"),
    ),
];

const POOL_SIZE: u32 = 16;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// Scratch schemas left behind by a process that died before dropping them
/// are removed by the next scratch store made after this age.
const STALE_SCRATCH: Duration = Duration::from_secs(24 * 3600);

impl Flavor for Postgres {
    fn bind<'q>(
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
        arg: &Arg,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        match arg {
            Arg::Int(v) => q.bind(*v),
            Arg::Text(v) => q.bind(v.clone()),
            Arg::Bytes(v) => q.bind(v.clone()),
        }
    }

    fn cell(row: &sqlx::postgres::PgRow, i: usize) -> Result<Cell, MetaError> {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            return Ok(Cell::Null);
        }
        Ok(match raw.type_info().name() {
            "INT8" => Cell::Int(row.try_get(i)?),
            "INT4" => Cell::Int(row.try_get::<i32, _>(i)?.into()),
            "INT2" => Cell::Int(row.try_get::<i16, _>(i)?.into()),
            "BOOL" => Cell::Int(row.try_get::<bool, _>(i)?.into()),
            "TEXT" | "VARCHAR" | "NAME" => Cell::Text(row.try_get(i)?),
            "BYTEA" => Cell::Bytes(row.try_get(i)?),
            other => {
                return Err(MetaError::Corrupt(format!(
                    "column {i} has unexpected type {other}"
                )));
            }
        })
    }

    /// `?N` becomes `$N`; the shared statements use no other `?`.
    fn sql(sql: &str, _args: usize) -> Cow<'_, str> {
        if sql.contains('?') {
            Cow::Owned(sql.replace('?', "$"))
        } else {
            Cow::Borrowed(sql)
        }
    }

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }
}

#[derive(Debug)]
struct PostgresDriver {
    pool: PgPool,
    /// For the dedicated connections that hold leader locks.
    options: PgConnectOptions,
    /// The schema the store lives in, part of every leader lock's key so
    /// that stores in different schemas of one database do not exclude
    /// each other.
    schema: String,
    /// Set for a scratch store: its schema is dropped with the driver.
    scratch: bool,
}

/// Opens the store in the database named by a `postgres://` url (its
/// `search_path`, `public` by default, names the schema) and applies pending
/// migrations. Several processes may do this at once.
pub async fn open(url: &str) -> Result<SqlMetadata, MetaError> {
    let options = parse(url)?;
    open_with(options, None, false).await
}

/// Like [`open`], in `schema` of that database (created if missing): one
/// database can hold several independent stores (tests use a schema each).
pub async fn open_in_schema(url: &str, schema: &str) -> Result<SqlMetadata, MetaError> {
    check_schema_name(schema)?;
    open_with(parse(url)?, Some(schema), false).await
}

fn parse(url: &str) -> Result<PgConnectOptions, MetaError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(MetaError::UnsupportedUrl(url.to_owned()));
    }
    Ok(PgConnectOptions::from_str(url)?)
}

fn check_schema_name(schema: &str) -> Result<(), MetaError> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(MetaError::UnsupportedUrl(format!(
            "schema {schema:?} (expected lowercase letters, digits and _)"
        )))
    }
}

/// A 64-bit advisory lock key for `name` within `schema`.
fn lock_key(schema: &str, name: &str) -> i64 {
    let h = blake3::hash(format!("artifactstore\0{schema}\0{name}").as_bytes());
    i64::from_be_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

async fn open_with(
    options: PgConnectOptions,
    schema: Option<&str>,
    scratch: bool,
) -> Result<SqlMetadata, MetaError> {
    let options = match schema {
        Some(s) => options.options([("search_path", s)]),
        None => options,
    };
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.clone())
        .await?;
    let schema = match schema {
        Some(s) => s.to_owned(),
        None => {
            sqlx::query_scalar::<_, String>("SELECT current_schema()")
                .fetch_one(&pool)
                .await?
        }
    };
    let driver = PostgresDriver {
        pool,
        options,
        schema,
        scratch,
    };
    driver.migrate().await?;
    Ok(SqlMetadata::new(Arc::new(driver)))
}

impl PostgresDriver {
    /// Creates the schema and applies migrations under a transaction-level
    /// advisory lock, so nodes starting together migrate once.
    async fn migrate(&self) -> Result<(), MetaError> {
        let mut tx = Conn::<Postgres, _>::new(self.pool.begin().await?);
        tx.execute(
            "SELECT pg_advisory_xact_lock(?1)",
            &[lock_key(&self.schema, "migrate").into()],
        )
        .await?;
        tx.execute_script(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\"; \
             CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            self.schema
        ))
        .await?;
        sql::migrate(&mut tx, MIGRATIONS).await?;
        Box::new(tx).commit().await
    }
}

impl Drop for PostgresDriver {
    fn drop(&mut self) {
        if !self.scratch {
            return;
        }
        // Best effort: a schema left behind (no runtime, a crash) is removed
        // by a later scratch store once it is stale.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let options = self.options.clone();
            let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
            rt.spawn(async move {
                if let Ok(mut conn) = PgConnection::connect_with(&options).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        }
    }
}

#[async_trait]
impl SqlDriver for PostgresDriver {
    async fn reader(&self) -> Result<Box<dyn SqlConn>, MetaError> {
        Ok(Box::new(Conn::<Postgres, _>::new(
            self.pool.acquire().await?,
        )))
    }

    async fn writer(&self) -> Result<Box<dyn SqlConn>, MetaError> {
        self.reader().await
    }

    async fn snapshot(&self) -> Result<Box<dyn SqlTxConn>, MetaError> {
        let tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        Ok(Box::new(Conn::new(tx)))
    }

    async fn begin_write(&self) -> Result<Box<dyn SqlTxConn>, MetaError> {
        let mut tx = Conn::<Postgres, _>::new(self.pool.begin().await?);
        // The write lock: held until commit or rollback. Under READ
        // COMMITTED every later statement sees what the previous holder
        // committed.
        tx.fetch("SELECT seq FROM log_head WHERE id = 1 FOR UPDATE", &[])
            .await?;
        Ok(Box::new(tx))
    }

    async fn try_lead(&self, role: &str) -> Result<Option<LeaderGuard>, MetaError> {
        let mut conn = self.pool.acquire().await?;
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(&self.schema, &format!("lead:{role}")))
            .fetch_one(&mut *conn)
            .await?;
        // A refused attempt gives the connection back to the pool (followers
        // ask often). A granted one takes it out: the connection is the lock,
        // and closing it (dropping the guard, or the process dying)
        // releases it.
        Ok(held.then(|| LeaderGuard::new(std::sync::Mutex::new(conn.detach()))))
    }

    async fn scratch(&self) -> Result<SqlMetadata, MetaError> {
        self.drop_stale_scratch().await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // The tail of a v7 UUID is random.
        let id = uuid::Uuid::now_v7().simple().to_string();
        let schema = format!("artifactstore_scratch_{now}_{}", &id[20..]);
        open_with(self.options.clone(), Some(&schema), true).await
    }
}

impl PostgresDriver {
    async fn drop_stale_scratch(&self) -> Result<(), MetaError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::TEXT FROM pg_namespace WHERE nspname LIKE 'artifactstore\\_scratch\\_%'",
        )
        .fetch_all(&self.pool)
        .await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        for name in names {
            let made: Option<u64> = name
                .strip_prefix("artifactstore_scratch_")
                .and_then(|rest| rest.split('_').next())
                .and_then(|secs| secs.parse().ok());
            if made.is_some_and(|t| now.saturating_sub(t) > STALE_SCRATCH.as_secs()) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                )))
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }
}
