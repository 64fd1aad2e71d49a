//! The SQL metadata store, written once for every SQL database.
//!
//! Every query, every rule of how an event changes the views, and every row
//! decoding lives here. A database plugs in through [`SqlDriver`] (connections,
//! the write lock, leader locks, scratch stores) and [`SqlConn`] (run a
//! statement with [`Arg`]s, hand back neutral [`Row`]s). The SQL is the common
//! subset SQLite and PostgreSQL both accept: `?N` placeholders (a driver may
//! rewrite them), integers as 64-bit, digests as byte strings, timestamps as
//! RFC 3339 text (fixed width, so text order is time order; PostgreSQL stores
//! them with the `C` collation so the comparison is bytewise).
//!
//! A write transaction holds the database-wide lock under which `seq` is
//! assigned, from its first statement to its end: the engine decides and
//! appends under it, whichever node it runs on.

use std::collections::HashSet;
use std::sync::Arc;

use artifactstore_core::event::{Event, EventData, EventDraft, Hash};
use artifactstore_core::manifest::Manifest;
use artifactstore_core::{Algorithm, BlobId, Digest, Timestamp};
use async_trait::async_trait;

use super::{
    BlobRecord, Deletion, Hold, LeaderGuard, MetaError, MetaTx, MetadataStore, PackageFile,
    PackageFilter, PackageRecord, Release, RetentionState, StoredEvent, StoredManifest, Tier,
    UploadSession, ViewsDigest,
};

/// A statement argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Vec<u8>),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(Some(v))
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(Some(v.to_owned()))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Arg {
        Arg::Text(Some(v.clone()))
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Arg {
        Arg::Text(v.map(str::to_owned))
    }
}
impl From<Timestamp> for Arg {
    fn from(v: Timestamp) -> Arg {
        Arg::Text(Some(v.to_string()))
    }
}
impl From<Option<Timestamp>> for Arg {
    fn from(v: Option<Timestamp>) -> Arg {
        Arg::Text(v.map(|t| t.to_string()))
    }
}
impl From<&[u8]> for Arg {
    fn from(v: &[u8]) -> Arg {
        Arg::Bytes(v.to_vec())
    }
}
impl From<&Hash> for Arg {
    fn from(v: &Hash) -> Arg {
        Arg::Bytes(v.to_vec())
    }
}

/// A column value as the database returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// One result row: column names (shared by the rows of one result) and cells.
#[derive(Debug, Clone)]
pub struct Row {
    names: Arc<[String]>,
    cells: Vec<Cell>,
}

impl Row {
    pub fn new(names: Arc<[String]>, cells: Vec<Cell>) -> Row {
        Row { names, cells }
    }

    fn cell(&self, col: &str) -> Result<&Cell, MetaError> {
        self.names
            .iter()
            .position(|n| n == col)
            .map(|i| &self.cells[i])
            .ok_or_else(|| MetaError::Corrupt(format!("no column {col} in the result")))
    }

    fn opt_i64(&self, col: &str) -> Result<Option<i64>, MetaError> {
        match self.cell(col)? {
            Cell::Null => Ok(None),
            Cell::Int(v) => Ok(Some(*v)),
            other => Err(MetaError::Corrupt(format!(
                "{col} is not an integer: {other:?}"
            ))),
        }
    }

    fn i64(&self, col: &str) -> Result<i64, MetaError> {
        self.opt_i64(col)?
            .ok_or_else(|| MetaError::Corrupt(format!("{col} is null")))
    }

    fn opt_u64(&self, col: &str) -> Result<Option<u64>, MetaError> {
        self.opt_i64(col)?
            .map(|v| u64::try_from(v).map_err(|_| MetaError::Corrupt(format!("negative {col}"))))
            .transpose()
    }

    fn u64(&self, col: &str) -> Result<u64, MetaError> {
        self.opt_u64(col)?
            .ok_or_else(|| MetaError::Corrupt(format!("{col} is null")))
    }

    fn opt_text(&self, col: &str) -> Result<Option<String>, MetaError> {
        match self.cell(col)? {
            Cell::Null => Ok(None),
            Cell::Text(v) => Ok(Some(v.clone())),
            other => Err(MetaError::Corrupt(format!("{col} is not text: {other:?}"))),
        }
    }

    pub(crate) fn text(&self, col: &str) -> Result<String, MetaError> {
        self.opt_text(col)?
            .ok_or_else(|| MetaError::Corrupt(format!("{col} is null")))
    }

    fn bytes(&self, col: &str) -> Result<Vec<u8>, MetaError> {
        match self.cell(col)? {
            Cell::Bytes(v) => Ok(v.clone()),
            other => Err(MetaError::Corrupt(format!(
                "{col} is not a byte string: {other:?}"
            ))),
        }
    }

    fn hash(&self, col: &str) -> Result<Hash, MetaError> {
        self.bytes(col)?
            .try_into()
            .map_err(|_| MetaError::Corrupt(format!("{col} is not 32 bytes")))
    }

    fn opt_ts(&self, col: &str) -> Result<Option<Timestamp>, MetaError> {
        self.opt_text(col)?
            .map(|v| {
                v.parse()
                    .map_err(|_| MetaError::Corrupt(format!("{col} is not a timestamp: {v}")))
            })
            .transpose()
    }

    fn ts(&self, col: &str) -> Result<Timestamp, MetaError> {
        self.opt_ts(col)?
            .ok_or_else(|| MetaError::Corrupt(format!("{col} is null")))
    }

    /// The row as a canonical CBOR array of its cells, for [`ViewsDigest`].
    fn to_value(&self) -> artifactstore_core::cbor::Value {
        use artifactstore_core::cbor::Value;
        Value::Array(
            self.cells
                .iter()
                .map(|c| match c {
                    Cell::Null => Value::Null,
                    Cell::Int(v) => Value::int(*v),
                    Cell::Text(v) => Value::Text(v.clone()),
                    Cell::Bytes(v) => Value::Bytes(v.clone()),
                })
                .collect(),
        )
    }
}

/// A connection or transaction that runs statements.
#[async_trait]
pub trait SqlConn: Send {
    /// Runs a query and returns its rows.
    async fn fetch(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<Row>, MetaError>;
    /// Runs a query and hands each row to `each` as it arrives, so a large
    /// result is never held whole.
    async fn fetch_each(
        &mut self,
        sql: &str,
        args: &[Arg],
        each: &mut (dyn FnMut(Row) -> Result<(), MetaError> + Send),
    ) -> Result<(), MetaError>;
    /// Runs a statement; returns the number of rows it changed.
    async fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<u64, MetaError>;
    /// Runs a script of several statements without arguments (migrations).
    async fn execute_script(&mut self, sql: &str) -> Result<(), MetaError>;
    /// Runs `statements` in order, stopping at the first that fails. A
    /// database that takes several statements with arguments in one send
    /// gets them in one: on SQLite every statement is a round trip to the
    /// connection's thread, and the end of a write transaction is several.
    async fn execute_all(&mut self, statements: &[Statement]) -> Result<(), MetaError> {
        execute_each(self, statements).await
    }
}

/// Runs `statements` one by one, stopping at the first that fails.
pub(crate) async fn execute_each<C: SqlConn + ?Sized>(
    conn: &mut C,
    statements: &[Statement],
) -> Result<(), MetaError> {
    for s in statements {
        conn.execute(&s.sql, &s.args).await?;
    }
    Ok(())
}

/// A statement and its arguments, for [`SqlConn::execute_all`].
#[derive(Debug)]
pub struct Statement {
    pub sql: String,
    pub args: Vec<Arg>,
}

impl Statement {
    pub fn new(sql: impl Into<String>, args: Vec<Arg>) -> Statement {
        Statement {
            sql: sql.into(),
            args,
        }
    }
}

/// `sql` with its parameters `?1, ?2, …` made anonymous (`?`), if they
/// appear in that order, each once, one per argument (`args` of them), so
/// that binding them in order binds the same values; `None` otherwise.
///
/// Why SQLite wants them so: sqlx binds each argument by asking for its
/// parameter's name, and SQLite finds a numbered parameter's name by
/// walking the statement's list of names from the start, so binding `n`
/// of them takes about `n²/2` steps (with 400 to a statement, that walk was
/// a tenth of the samples of a 10,000-file package's creation). An
/// anonymous parameter has no name, found in one step.
pub(crate) fn anonymous(sql: &str, args: usize) -> Option<String> {
    let mut out = String::with_capacity(sql.len());
    let mut expected = 1;
    let mut rest = sql;
    while let Some(at) = rest.find('?') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if rest[..digits].parse::<usize>() != Ok(expected) {
            return None;
        }
        expected += 1;
        rest = &rest[digits..];
    }
    if expected != args + 1 {
        return None;
    }
    out.push_str(rest);
    Some(out)
}

/// `statements` as one script, its parameters bound in the order they
/// appear (anonymous `?`), for a database that binds those across the
/// statements of one query. `None` unless each statement's parameters can
/// be made [`anonymous`] (as the statements a transaction sends at its end
/// can): numbered parameters would be bound by number across the whole
/// script, and SQLite counts the numbers a statement skips as parameters
/// of its own.
pub(crate) fn joined(statements: &[Statement]) -> Option<(String, Vec<Arg>)> {
    let mut sql = String::new();
    let mut args = Vec::new();
    for s in statements {
        sql.push_str(&anonymous(&s.sql, s.args.len())?);
        sql.push_str(";\n");
        args.extend(s.args.iter().cloned());
    }
    Some((sql, args))
}

/// A transaction that ends in a commit (dropping it rolls back).
#[async_trait]
pub trait SqlTxConn: SqlConn {
    async fn commit(self: Box<Self>) -> Result<(), MetaError>;
}

/// What one SQL database brings: its connections, its locks and its scratch
/// stores. Everything else is [`SqlMetadata`]'s.
#[async_trait]
pub trait SqlDriver: Send + Sync + std::fmt::Debug + 'static {
    /// A pooled connection for reads outside any write transaction.
    async fn reader(&self) -> Result<Box<dyn SqlConn>, MetaError>;
    /// A connection for writes outside the log (upload sessions), each
    /// statement its own transaction.
    async fn writer(&self) -> Result<Box<dyn SqlConn>, MetaError>;
    /// A read-only transaction that sees one snapshot throughout.
    async fn snapshot(&self) -> Result<Box<dyn SqlTxConn>, MetaError>;
    /// A write transaction that holds the database-wide write lock from its
    /// first statement: writers queue here, on whatever node they run.
    async fn begin_write(&self) -> Result<Box<dyn SqlTxConn>, MetaError>;
    /// See [`MetadataStore::try_lead`].
    async fn try_lead(&self, role: &str) -> Result<Option<LeaderGuard>, MetaError>;
    /// A new, empty database of the same kind, dropped with the driver.
    async fn scratch(&self) -> Result<SqlMetadata, MetaError>;
    /// Empties `tables` (parents first: each table's foreign keys point
    /// only at tables before it) inside the write transaction `tx`, whose
    /// readers see the old rows until it commits. Deleting the rows, children
    /// first, works on every database; one may have a faster way.
    async fn empty_tables(
        &self,
        tx: &mut dyn SqlConn,
        tables: &[&'static str],
    ) -> Result<(), MetaError> {
        for table in tables.iter().rev() {
            tx.execute(&format!("DELETE FROM {table}"), &[]).await?;
        }
        Ok(())
    }
}

/// The metadata store over any [`SqlDriver`].
#[derive(Debug, Clone)]
pub struct SqlMetadata {
    driver: Arc<dyn SqlDriver>,
}

impl SqlMetadata {
    pub fn new(driver: Arc<dyn SqlDriver>) -> SqlMetadata {
        SqlMetadata { driver }
    }

    async fn read(&self, sql: &str, args: &[Arg]) -> Result<Vec<Row>, MetaError> {
        self.driver.reader().await?.fetch(sql, args).await
    }
}

/// Applies the migrations a database has not seen yet, in order, inside
/// `tx`, recording each in `schema_migrations` (which the caller created).
pub async fn migrate(
    tx: &mut dyn SqlConn,
    migrations: &[(i64, &'static str)],
) -> Result<(), MetaError> {
    let rows = tx
        .fetch(
            "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) AS v FROM schema_migrations",
            &[],
        )
        .await?;
    let current = rows.first().map(|r| r.i64("v")).transpose()?.unwrap_or(0);
    for &(version, sql) in migrations.iter().filter(|(v, _)| *v > current) {
        let step = async {
            tx.execute_script(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES (?1)",
                &[version.into()],
            )
            .await
        };
        step.await.map_err(|e| match e {
            MetaError::Db(source) => MetaError::Migration { version, source },
            other => other,
        })?;
    }
    Ok(())
}

pub(crate) fn i64_of(n: u64) -> Result<i64, MetaError> {
    i64::try_from(n)
        .map_err(|_| MetaError::Corrupt(format!("{n} exceeds the database integer range")))
}

fn blob_record(row: &Row) -> Result<BlobRecord, MetaError> {
    Ok(BlobRecord {
        blob: BlobId {
            sha256: row.hash("sha256")?,
            blake3: row.hash("blake3")?,
            size: row.u64("size")?,
        },
        tier: row.text("tier")?.parse()?,
        location: row.text("location")?,
        stored_seq: row.u64("stored_seq")?,
        stored_at: row.ts("stored_at")?,
    })
}

fn hold_record(row: &Row) -> Result<Hold, MetaError> {
    let released = match row.opt_ts("released_at")? {
        None => None,
        Some(at) => Some(Release {
            by: row.opt_text("released_by")?.unwrap_or_default(),
            at,
            reason: row.opt_text("release_reason")?.unwrap_or_default(),
        }),
    };
    Ok(Hold {
        hold_id: row.text("hold_id")?,
        reason: row.text("reason")?,
        applied_by: row.text("applied_by")?,
        applied_at: row.ts("applied_at")?,
        released,
    })
}

fn session_record(row: &Row) -> Result<UploadSession, MetaError> {
    Ok(UploadSession {
        id: row.text("id")?,
        created_at: row.ts("created_at")?,
        actor: row.text("actor")?,
    })
}

fn stored_event(row: &Row) -> Result<StoredEvent, MetaError> {
    Ok(StoredEvent {
        seq: row.u64("seq")?,
        bytes: row.bytes("body")?,
        hash: row.hash("hash")?,
    })
}

const PACKAGE_SELECT: &str = "SELECT p.*, r.class AS r_class, r.current_expires_at, r.active_holds, \
     r.eligible_for_deletion, r.last_eligibility_seq, r.deleted_seq, r.deleted_at, r.deleted_reason, \
     r.bytes_freed \
     FROM packages p JOIN retention_state r ON r.package_id = p.id";

fn package_record(row: &Row) -> Result<PackageRecord, MetaError> {
    Ok(PackageRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        manifest_sha256: row.hash("manifest_sha256")?,
        manifest_blake3: row.hash("manifest_blake3")?,
        file_count: row.u64("file_count")?,
        total_size: row.u64("total_size")?,
        retention_class: row.text("retention_class")?,
        created_seq: row.u64("created_seq")?,
        created_at: row.ts("created_at")?,
        created_by: row.text("created_by")?,
        tier: row.text("tier")?.parse()?,
        retention: RetentionState {
            class: row.text("r_class")?,
            current_expires_at: row.opt_ts("current_expires_at")?,
            active_holds: row.u64("active_holds")?,
            eligible_for_deletion: row.i64("eligible_for_deletion")? != 0,
            last_eligibility_seq: row.opt_u64("last_eligibility_seq")?,
            deleted: deletion(row)?,
        },
    })
}

fn deletion(row: &Row) -> Result<Option<Deletion>, MetaError> {
    let Some(seq) = row.opt_u64("deleted_seq")? else {
        return Ok(None);
    };
    let corrupt = || MetaError::Corrupt("incomplete deletion columns".into());
    Ok(Some(Deletion {
        seq,
        at: row.opt_ts("deleted_at")?.ok_or_else(corrupt)?,
        reason: row.opt_text("deleted_reason")?.ok_or_else(corrupt)?,
        bytes_freed: row.opt_u64("bytes_freed")?.ok_or_else(corrupt)?,
    }))
}

fn all<T>(rows: Vec<Row>, decode: fn(&Row) -> Result<T, MetaError>) -> Result<Vec<T>, MetaError> {
    rows.iter().map(decode).collect()
}

fn first<T>(
    rows: Vec<Row>,
    decode: fn(&Row) -> Result<T, MetaError>,
) -> Result<Option<T>, MetaError> {
    rows.first().map(decode).transpose()
}

async fn find_blob(
    conn: &mut dyn SqlConn,
    digest: &Digest,
) -> Result<Option<BlobRecord>, MetaError> {
    let sql = match digest.algorithm() {
        Algorithm::Sha256 => "SELECT * FROM blobs WHERE sha256 = ?1",
        Algorithm::Blake3 => "SELECT * FROM blobs WHERE blake3 = ?1",
    };
    first(
        conn.fetch(sql, &[digest.bytes()[..].into()]).await?,
        blob_record,
    )
}

/// Most bound parameters in one statement (an `IN (…)` lookup, a
/// multi-row insert). Far below both databases' limits. It was made small
/// when binding numbered parameters cost more than their number (with
/// 3,000, `sqlite3_bind_parameter_name` took 15 % of a rebuild's samples;
/// 400 took a 1M-event rebuild from 80 s to 71 s). SQLite's are anonymous
/// now ([`anonymous`]), and 4,000 measured no gain on a 10,000-file
/// package's creation, so it stays.
const MAX_PARAMS: usize = 400;

/// `?1, ?2, …` for `n` parameters, in rows of `width` in parentheses when
/// `width > 0`.
fn placeholders(n: usize, width: usize) -> String {
    let mark = |i: usize| format!("?{i}");
    if width == 0 {
        return (1..=n).map(mark).collect::<Vec<_>>().join(", ");
    }
    (0..n / width)
        .map(|row| {
            let cols: Vec<String> = (1..=width).map(|c| mark(row * width + c)).collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rows of `select` (a `SELECT … FROM` with no `WHERE`) whose
/// `sha256` is one of these, asked [`MAX_PARAMS`] at a time, each decoded by
/// `decode`: a package names thousands of blobs.
async fn by_sha256<T>(
    conn: &mut dyn SqlConn,
    select: &str,
    sha256: &[Hash],
    decode: fn(&Row) -> Result<T, MetaError>,
) -> Result<Vec<T>, MetaError> {
    let mut found = Vec::with_capacity(sha256.len());
    for chunk in sha256.chunks(MAX_PARAMS) {
        let sql = format!(
            "{select} WHERE sha256 IN ({})",
            placeholders(chunk.len(), 0)
        );
        let args: Vec<Arg> = chunk.iter().map(Arg::from).collect();
        found.extend(all(conn.fetch(&sql, &args).await?, decode)?);
    }
    Ok(found)
}

async fn find_blobs(conn: &mut dyn SqlConn, sha256: &[Hash]) -> Result<Vec<BlobRecord>, MetaError> {
    by_sha256(conn, "SELECT * FROM blobs", sha256, blob_record).await
}

async fn find_blob_ids(conn: &mut dyn SqlConn, sha256: &[Hash]) -> Result<Vec<BlobId>, MetaError> {
    let blob_id = |row: &Row| {
        Ok(BlobId {
            sha256: row.hash("sha256")?,
            blake3: row.hash("blake3")?,
            size: row.u64("size")?,
        })
    };
    by_sha256(
        conn,
        "SELECT sha256, blake3, size FROM blobs",
        sha256,
        blob_id,
    )
    .await
}

fn stored_manifest(row: &Row) -> Result<StoredManifest, MetaError> {
    Ok(StoredManifest {
        sha256: row.hash("sha256")?,
        blake3: row.hash("blake3")?,
        body: row.bytes("body")?,
    })
}

async fn find_package(
    conn: &mut dyn SqlConn,
    id: &str,
) -> Result<Option<PackageRecord>, MetaError> {
    let sql = format!("{PACKAGE_SELECT} WHERE p.id = ?1");
    first(conn.fetch(&sql, &[id.into()]).await?, package_record)
}

/// Up to `limit` packages whose `retention_state` row matches `condition`
/// (SQL with `?1` for `now`, then its ORDER BY), chosen by an index on that
/// table, so the work follows what is due, not the store's size.
async fn packages_by_retention(
    conn: &mut dyn SqlConn,
    condition: &'static str,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<PackageRecord>, MetaError> {
    let sql = format!(
        "{PACKAGE_SELECT} WHERE r.package_id IN (SELECT package_id FROM retention_state \
         WHERE {condition} LIMIT ?2) ORDER BY p.created_seq"
    );
    all(
        conn.fetch(&sql, &[now.into(), i64::from(limit).into()])
            .await?,
        package_record,
    )
}

/// Runs a statement that must change exactly one row of the views.
async fn update_one(
    conn: &mut dyn SqlConn,
    event: &Event,
    sql: &str,
    args: &[Arg],
) -> Result<(), MetaError> {
    if conn.execute(sql, args).await? != 1 {
        return Err(MetaError::Corrupt(format!(
            "{} at seq {} does not apply to the views of {}",
            event.type_name(),
            event.seq(),
            event.subject()
        )));
    }
    Ok(())
}

/// SQL that is true for a package (table alias `alias`) whose class is one
/// of `classes` and that was created at or before that class's cutoff; its
/// arguments are appended to `args`.
fn due_condition(alias: &str, classes: &[(String, Timestamp)], args: &mut Vec<Arg>) -> String {
    if classes.is_empty() {
        return "1 = 0".to_owned();
    }
    let mut terms = Vec::with_capacity(classes.len());
    for (class, cutoff) in classes {
        args.push(class.into());
        args.push((*cutoff).into());
        terms.push(format!(
            "({alias}.retention_class = ?{} AND {alias}.created_at <= ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    terms.join(" OR ")
}

const EVENTS_AFTER: &str =
    "SELECT seq, body, hash FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2";

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

/// The tables an append inserts rows into (the log, then the views), in
/// the order pending rows are sent: `packages` before the views whose
/// foreign keys point at it. (Order of appearance would not do: a batch
/// that begins with the `retention_state` row of a package sent earlier
/// would send the next package's row there before that package's own row.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Table {
    Events,
    Packages,
    Blobs,
    PackageFiles,
    RetentionState,
    Holds,
    /// Not a view: kept by a rebuild, which reads manifests from it.
    Manifests,
}

impl Table {
    /// Every view table, parents first.
    const VIEWS: [Table; 5] = [
        Table::Packages,
        Table::Blobs,
        Table::PackageFiles,
        Table::RetentionState,
        Table::Holds,
    ];

    fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Packages => "packages",
            Table::Blobs => "blobs",
            Table::PackageFiles => "package_files",
            Table::RetentionState => "retention_state",
            Table::Holds => "holds",
            Table::Manifests => "manifests",
        }
    }

    fn insert_into(self) -> &'static str {
        match self {
            Table::Events => "events (seq, id, type, subject, at, body, hash)",
            Table::Packages => {
                "packages (id, name, manifest_sha256, manifest_blake3, file_count, total_size, \
                 retention_class, created_seq, created_at, created_by)"
            }
            Table::Blobs => "blobs (sha256, blake3, size, location, stored_seq, stored_at)",
            Table::PackageFiles => {
                "package_files (package_id, path, sha256, blake3, size, media_type)"
            }
            Table::RetentionState => "retention_state (package_id, class, current_expires_at)",
            Table::Holds => {
                "holds (package_id, hold_id, reason, applied_by, applied_at, applied_seq)"
            }
            Table::Manifests => "manifests (sha256, blake3, body)",
        }
    }

    /// How an insert meets a row that is there already: only a manifest
    /// may be, named again by a later package (or by one being replayed).
    fn on_conflict(self) -> &'static str {
        match self {
            Table::Manifests => " ON CONFLICT DO NOTHING",
            _ => "",
        }
    }
}

/// One statement an event makes on the views.
#[derive(Debug)]
enum ViewOp {
    /// A row for `table`, its values in [`Table::insert_into`]'s column
    /// order. Pending rows go to the database together, one statement per
    /// table, tables in [`Table`] order.
    Insert { table: Table, row: Vec<Arg> },
    /// A statement that must change exactly one row: if it does not, the
    /// event does not fit the views it is applied to.
    One { sql: &'static str, args: Vec<Arg> },
    /// A statement that may change any number of rows.
    Any { sql: &'static str, args: Vec<Arg> },
}

fn one(sql: &'static str, args: Vec<Arg>) -> ViewOp {
    ViewOp::One { sql, args }
}

/// What one event does to the views, as statements in order. Appends and
/// rebuilds both come here: this is where each event type's meaning for
/// the views is defined. (The views' applied seq is recorded by the
/// transaction, once, at commit.)
fn view_ops(event: &Event, manifest: Option<&Manifest>) -> Result<Vec<ViewOp>, MetaError> {
    if manifest.is_some() && !matches!(event.data(), EventData::PackageCreated { .. }) {
        return Err(MetaError::Corrupt(format!(
            "a manifest was given with {}",
            event.type_name()
        )));
    }
    let seq = i64_of(event.seq())?;
    let subject = event.subject();
    Ok(match event.data() {
        EventData::BlobStored { blob, location } => vec![ViewOp::Insert {
            table: Table::Blobs,
            row: vec![
                (&blob.sha256).into(),
                (&blob.blake3).into(),
                i64_of(blob.size)?.into(),
                location.into(),
                seq.into(),
                event.at().into(),
            ],
        }],
        EventData::BlobDeleted { blob } => vec![one(
            "DELETE FROM blobs WHERE sha256 = ?1 AND blake3 = ?2",
            vec![(&blob.sha256).into(), (&blob.blake3).into()],
        )],
        EventData::PackageDeleted {
            reason,
            bytes_freed,
        } => vec![
            one(
                "UPDATE retention_state SET deleted_seq = ?1, deleted_at = ?2, deleted_reason = ?3, \
                 bytes_freed = ?4 WHERE package_id = ?5 AND deleted_seq IS NULL",
                vec![
                    seq.into(),
                    event.at().into(),
                    reason.into(),
                    i64_of(*bytes_freed)?.into(),
                    subject.into(),
                ],
            ),
            ViewOp::Any {
                sql: "DELETE FROM package_files WHERE package_id = ?1",
                args: vec![subject.into()],
            },
        ],
        EventData::PackageCreated {
            name,
            manifest_sha256,
            manifest_blake3,
            file_count,
            total_size,
            retention_class,
        } => {
            let m = manifest.ok_or_else(|| {
                MetaError::Corrupt(format!("package {subject} applied without its manifest"))
            })?;
            let body = m.to_canonical_bytes();
            let id = BlobId::of(&body);
            let consistent = id.sha256 == *manifest_sha256
                && id.blake3 == *manifest_blake3
                && m.name() == name
                && m.files().len() as u64 == *file_count
                && m.total_size() == *total_size;
            if !consistent {
                return Err(MetaError::Corrupt(format!(
                    "package {subject}: the manifest does not match its event"
                )));
            }
            let mut ops = Vec::with_capacity(2 + m.files().len());
            ops.push(ViewOp::Insert {
                table: Table::Manifests,
                row: vec![
                    manifest_sha256.into(),
                    manifest_blake3.into(),
                    Arg::Bytes(body),
                ],
            });
            ops.push(ViewOp::Insert {
                table: Table::Packages,
                row: vec![
                    subject.into(),
                    name.into(),
                    manifest_sha256.into(),
                    manifest_blake3.into(),
                    i64_of(*file_count)?.into(),
                    i64_of(*total_size)?.into(),
                    retention_class.into(),
                    seq.into(),
                    event.at().into(),
                    event.actor().into(),
                ],
            });
            for f in m.files() {
                ops.push(ViewOp::Insert {
                    table: Table::PackageFiles,
                    row: vec![
                        subject.into(),
                        (&f.path).into(),
                        (&f.blob.sha256).into(),
                        (&f.blob.blake3).into(),
                        i64_of(f.blob.size)?.into(),
                        f.media_type.as_deref().into(),
                    ],
                });
            }
            ops
        }
        EventData::RetentionDefaultApplied { class, expires_at } => vec![ViewOp::Insert {
            table: Table::RetentionState,
            row: vec![subject.into(), class.into(), (*expires_at).into()],
        }],
        EventData::RetentionExtended { new_expires_at, .. } => vec![one(
            "UPDATE retention_state SET current_expires_at = ?1, eligible_for_deletion = 0 \
             WHERE package_id = ?2",
            vec![(*new_expires_at).into(), subject.into()],
        )],
        EventData::RetentionHoldApplied { hold_id, reason } => vec![
            ViewOp::Insert {
                table: Table::Holds,
                row: vec![
                    subject.into(),
                    hold_id.into(),
                    reason.into(),
                    event.actor().into(),
                    event.at().into(),
                    seq.into(),
                ],
            },
            one(
                "UPDATE retention_state SET active_holds = active_holds + 1, \
                 eligible_for_deletion = 0 WHERE package_id = ?1",
                vec![subject.into()],
            ),
        ],
        EventData::RetentionHoldReleased { hold_id, reason } => vec![
            one(
                "UPDATE holds SET released_by = ?1, released_at = ?2, release_reason = ?3, \
                 released_seq = ?4 WHERE package_id = ?5 AND hold_id = ?6 AND released_seq IS NULL",
                vec![
                    event.actor().into(),
                    event.at().into(),
                    reason.into(),
                    seq.into(),
                    subject.into(),
                    hold_id.into(),
                ],
            ),
            one(
                "UPDATE retention_state SET active_holds = active_holds - 1 \
                 WHERE package_id = ?1 AND active_holds > 0",
                vec![subject.into()],
            ),
        ],
        EventData::PackageTierChanged { tier, moved } => {
            let tier: Tier = tier.parse()?;
            let mut ops: Vec<ViewOp> = moved
                .iter()
                .map(|m| {
                    // Only a blob still in the hot tier moves.
                    one(
                        "UPDATE blobs SET tier = ?1, location = ?2 \
                         WHERE sha256 = ?3 AND blake3 = ?4 AND tier = 'hot'",
                        vec![
                            tier.as_str().into(),
                            (&m.location).into(),
                            (&m.blob.sha256).into(),
                            (&m.blob.blake3).into(),
                        ],
                    )
                })
                .collect();
            ops.push(one(
                "UPDATE packages SET tier = ?1 WHERE id = ?2",
                vec![tier.as_str().into(), subject.into()],
            ));
            ops
        }
        EventData::RetentionDeletionEligible { .. } => vec![one(
            "UPDATE retention_state SET eligible_for_deletion = 1, last_eligibility_seq = ?1 \
             WHERE package_id = ?2",
            vec![seq.into(), subject.into()],
        )],
    })
}

/// Rows waiting to be inserted, by table.
#[derive(Debug, Default)]
struct PendingRows {
    tables: std::collections::BTreeMap<Table, (usize, Vec<Arg>)>,
    params: usize,
}

impl PendingRows {
    fn add(&mut self, table: Table, row: Vec<Arg>) {
        self.params += row.len();
        let (width, args) = self.tables.entry(table).or_insert((row.len(), Vec::new()));
        debug_assert_eq!(*width, row.len(), "rows of {table:?} differ in width");
        args.extend(row);
    }

    /// The held-back rows as one multi-row insert per table, in [`Table`]
    /// order; none are held back any more.
    fn take(&mut self) -> Vec<Statement> {
        self.params = 0;
        std::mem::take(&mut self.tables)
            .into_iter()
            .map(|(table, (width, args))| {
                let sql = format!(
                    "INSERT INTO {} VALUES {}{}",
                    table.insert_into(),
                    placeholders(args.len(), width),
                    table.on_conflict()
                );
                Statement::new(sql, args)
            })
            .collect()
    }
}

/// Applies events to the views, in order: each event's statements as
/// [`view_ops`] gives them, inserts held back by `conn` so that those of
/// consecutive events go as one multi-row statement per table. One event is
/// an append; a page of the log is a rebuild, where one round trip per row
/// was most of the time.
async fn apply(
    conn: &mut Deferred,
    events: &[(&Event, Option<&Manifest>)],
) -> Result<(), MetaError> {
    for (event, manifest) in events {
        for op in view_ops(event, *manifest)? {
            match op {
                ViewOp::Insert { table, row } => conn.insert(table, row).await?,
                ViewOp::One { sql, args } => update_one(conn, event, sql, &args).await?,
                ViewOp::Any { sql, args } => {
                    conn.execute(sql, &args).await?;
                }
            }
        }
    }
    Ok(())
}

/// A write transaction's connection that holds inserts back: their rows
/// wait, by table, until any other statement or the commit, and then go as
/// one multi-row statement per table ([`Table`] order). Statements are
/// round trips, and a transaction's inserts are most of its statements.
struct Deferred {
    tx: Box<dyn SqlTxConn>,
    pending: PendingRows,
    /// A write of this transaction failed part-way (one of its statements,
    /// or sending held-back rows): rows may be missing or left behind, so
    /// the transaction runs nothing more and cannot commit (as a PostgreSQL
    /// transaction is aborted by an error). Dropping it rolls everything
    /// back. The one place this rule lives: [`SqlTx::guarded`] sets it too.
    failed: bool,
}

impl Deferred {
    fn new(tx: Box<dyn SqlTxConn>) -> Deferred {
        Deferred {
            tx,
            pending: PendingRows::default(),
            failed: false,
        }
    }

    async fn insert(&mut self, table: Table, row: Vec<Arg>) -> Result<(), MetaError> {
        if self.pending.params + row.len() > MAX_PARAMS {
            self.flush().await?;
        }
        self.pending.add(table, row);
        Ok(())
    }

    fn refuse_if_failed(&self) -> Result<(), MetaError> {
        if self.failed {
            return Err(MetaError::Corrupt(
                "an earlier write of this transaction failed; it can only be rolled back".into(),
            ));
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), MetaError> {
        self.send(Vec::new()).await
    }

    /// Sends the held-back rows, then `then`, in one send where the
    /// database allows it.
    async fn send(&mut self, then: Vec<Statement>) -> Result<(), MetaError> {
        self.refuse_if_failed()?;
        let mut statements = self.pending.take();
        statements.extend(then);
        if statements.is_empty() {
            return Ok(());
        }
        let sent = self.tx.execute_all(&statements).await;
        self.failed = sent.is_err();
        sent
    }

    /// Sends the held-back rows and `last`, then commits.
    async fn commit(mut self, last: Vec<Statement>) -> Result<(), MetaError> {
        self.send(last).await?;
        self.tx.commit().await
    }
}

#[async_trait]
impl SqlConn for Deferred {
    async fn fetch(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<Row>, MetaError> {
        self.flush().await?;
        self.tx.fetch(sql, args).await
    }

    async fn fetch_each(
        &mut self,
        sql: &str,
        args: &[Arg],
        each: &mut (dyn FnMut(Row) -> Result<(), MetaError> + Send),
    ) -> Result<(), MetaError> {
        self.flush().await?;
        self.tx.fetch_each(sql, args, each).await
    }

    async fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<u64, MetaError> {
        self.flush().await?;
        self.tx.execute(sql, args).await
    }

    async fn execute_script(&mut self, sql: &str) -> Result<(), MetaError> {
        self.flush().await?;
        self.tx.execute_script(sql).await
    }
}

const SESSION_COLUMNS: &str = "SELECT id, created_at, actor FROM upload_sessions";

#[async_trait]
impl MetadataStore for SqlMetadata {
    async fn begin(&self) -> Result<Box<dyn MetaTx>, MetaError> {
        Ok(Box::new(SqlTx {
            head: None,
            head_moved: false,
            applied: None,
            tx: Deferred::new(self.driver.begin_write().await?),
            driver: self.driver.clone(),
        }))
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetaError> {
        find_blob(&mut *self.driver.reader().await?, digest).await
    }

    async fn blobs_by_sha256(&self, sha256: &[Hash]) -> Result<Vec<BlobRecord>, MetaError> {
        find_blobs(&mut *self.driver.reader().await?, sha256).await
    }

    async fn stored_blobs(&self, sha256: &[Hash]) -> Result<Vec<BlobId>, MetaError> {
        find_blob_ids(&mut *self.driver.reader().await?, sha256).await
    }

    async fn manifests_by_sha256(&self, sha256: &[Hash]) -> Result<Vec<StoredManifest>, MetaError> {
        let select = "SELECT sha256, blake3, body FROM manifests";
        let mut conn = self.driver.reader().await?;
        by_sha256(&mut *conn, select, sha256, stored_manifest).await
    }

    async fn manifests_after(
        &self,
        after: &Hash,
        limit: u32,
    ) -> Result<Vec<StoredManifest>, MetaError> {
        let rows = self
            .read(
                "SELECT sha256, blake3, body FROM manifests WHERE sha256 > ?1 \
                 ORDER BY sha256 LIMIT ?2",
                &[after.into(), i64::from(limit).into()],
            )
            .await?;
        all(rows, stored_manifest)
    }

    async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<StoredEvent>, MetaError> {
        let args = [i64_of(after)?.into(), i64::from(limit).into()];
        all(self.read(EVENTS_AFTER, &args).await?, stored_event)
    }

    async fn head(&self) -> Result<(u64, Hash), MetaError> {
        let rows = self
            .read("SELECT seq, hash FROM log_head WHERE id = 1", &[])
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| MetaError::Corrupt("no log_head row".into()))?;
        Ok((row.u64("seq")?, row.hash("hash")?))
    }

    async fn package(&self, id: &str) -> Result<Option<PackageRecord>, MetaError> {
        find_package(&mut *self.driver.reader().await?, id).await
    }

    async fn holds(&self, package_id: &str) -> Result<Vec<Hold>, MetaError> {
        let rows = self
            .read(
                "SELECT * FROM holds WHERE package_id = ?1 ORDER BY applied_seq",
                &[package_id.into()],
            )
            .await?;
        all(rows, hold_record)
    }

    async fn events_of(
        &self,
        subject: &str,
        type_prefix: &str,
    ) -> Result<Vec<StoredEvent>, MetaError> {
        // A substring comparison, not LIKE or GLOB: no character of the
        // prefix is a pattern.
        let rows = self
            .read(
                "SELECT seq, body, hash FROM events WHERE subject = ?1 \
                 AND substr(type, 1, length(?2)) = ?2 ORDER BY seq",
                &[subject.into(), type_prefix.into()],
            )
            .await?;
        all(rows, stored_event)
    }

    async fn packages(
        &self,
        filter: &PackageFilter,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<PackageRecord>, MetaError> {
        let mut sql = format!("{PACKAGE_SELECT} WHERE p.created_seq > ?1");
        let mut args: Vec<Arg> = vec![i64_of(after_seq)?.into()];
        let mut bind = |sql: &mut String, clause: &str, arg: Arg| {
            args.push(arg);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(name) = &filter.name {
            bind(&mut sql, "p.name =", name.into());
        }
        if let Some(class) = &filter.retention_class {
            bind(&mut sql, "p.retention_class =", class.into());
        }
        if let Some(eligible) = filter.eligible {
            bind(
                &mut sql,
                "r.eligible_for_deletion =",
                i64::from(eligible).into(),
            );
        }
        match filter.deleted {
            Some(true) => sql.push_str(" AND r.deleted_seq IS NOT NULL"),
            Some(false) => sql.push_str(" AND r.deleted_seq IS NULL"),
            None => {}
        }
        args.push(i64::from(limit).into());
        sql.push_str(&format!(" ORDER BY p.created_seq LIMIT ?{}", args.len()));
        all(self.read(&sql, &args).await?, package_record)
    }

    async fn package_file(
        &self,
        package_id: &str,
        path: &str,
    ) -> Result<Option<PackageFile>, MetaError> {
        let rows = self
            .read(
                "SELECT * FROM package_files WHERE package_id = ?1 AND path = ?2",
                &[package_id.into(), path.into()],
            )
            .await?;
        first(rows, |row| {
            Ok(PackageFile {
                path: row.text("path")?,
                blob: BlobId {
                    sha256: row.hash("sha256")?,
                    blake3: row.hash("blake3")?,
                    size: row.u64("size")?,
                },
                media_type: row.opt_text("media_type")?,
            })
        })
    }

    async fn session_insert(&self, s: &UploadSession) -> Result<(), MetaError> {
        let mut conn = self.driver.writer().await?;
        conn.execute(
            "INSERT INTO upload_sessions (id, created_at, actor) VALUES (?1, ?2, ?3)",
            &[(&s.id).into(), s.created_at.into(), (&s.actor).into()],
        )
        .await?;
        Ok(())
    }

    async fn session_get(&self, id: &str) -> Result<Option<UploadSession>, MetaError> {
        let sql = format!("{SESSION_COLUMNS} WHERE id = ?1");
        first(self.read(&sql, &[id.into()]).await?, session_record)
    }

    async fn session_delete(&self, id: &str) -> Result<bool, MetaError> {
        let mut conn = self.driver.writer().await?;
        let n = conn
            .execute("DELETE FROM upload_sessions WHERE id = ?1", &[id.into()])
            .await?;
        Ok(n > 0)
    }

    async fn blobs_after(&self, after: &Hash, limit: u32) -> Result<Vec<BlobRecord>, MetaError> {
        let rows = self
            .read(
                "SELECT * FROM blobs WHERE sha256 > ?1 ORDER BY sha256 LIMIT ?2",
                &[after.into(), i64::from(limit).into()],
            )
            .await?;
        all(rows, blob_record)
    }

    async fn views_digest(&self) -> Result<ViewsDigest, MetaError> {
        let mut tx = self.driver.snapshot().await?;
        let rows = tx
            .fetch("SELECT applied_seq FROM views_state WHERE id = 1", &[])
            .await?;
        let applied = rows
            .first()
            .ok_or_else(|| MetaError::Corrupt("no views_state row".into()))?
            .u64("applied_seq")?;
        let mut tables = Vec::with_capacity(VIEWS.len());
        for &(name, sql) in VIEWS {
            let mut hasher = blake3::Hasher::new();
            let mut rows = 0u64;
            tx.fetch_each(sql, &[], &mut |row| {
                hasher.update(&row.to_value().to_canonical_bytes());
                rows += 1;
                Ok(())
            })
            .await?;
            tables.push((name, rows, *hasher.finalize().as_bytes()));
        }
        tx.commit().await?;
        Ok(ViewsDigest {
            applied_seq: applied,
            tables,
        })
    }

    async fn scratch(&self) -> Result<Box<dyn MetadataStore>, MetaError> {
        Ok(Box::new(self.driver.scratch().await?))
    }

    async fn ping(&self) -> Result<(), MetaError> {
        self.read("SELECT 1 AS one", &[]).await?;
        Ok(())
    }

    async fn try_lead(&self, role: &str) -> Result<Option<LeaderGuard>, MetaError> {
        self.driver.try_lead(role).await
    }

    async fn sessions_before(
        &self,
        cutoff: Timestamp,
        limit: u32,
    ) -> Result<Vec<UploadSession>, MetaError> {
        let sql = format!("{SESSION_COLUMNS} WHERE created_at < ?1 ORDER BY created_at LIMIT ?2");
        let rows = self
            .read(&sql, &[cutoff.into(), i64::from(limit).into()])
            .await?;
        all(rows, session_record)
    }
}

/// A write transaction. It holds the write lock throughout, so the log's
/// head is read once and then followed in memory; `log_head` and
/// `views_state` are written once, at commit, not once per event (two
/// statements less per event: statements are round trips, and they are
/// what an append costs).
struct SqlTx {
    tx: Deferred,
    driver: Arc<dyn SqlDriver>,
    head: Option<(u64, Hash)>,
    /// Whether events were written since the head was read.
    head_moved: bool,
    /// The last seq applied to the views, if any was.
    applied: Option<u64>,
}

impl SqlTx {
    /// The seq and hash of the last event, read under the write lock.
    async fn head(&mut self) -> Result<(u64, Hash), MetaError> {
        if let Some(head) = self.head {
            return Ok(head);
        }
        let rows = self
            .tx
            .fetch("SELECT seq, hash FROM log_head WHERE id = 1", &[])
            .await?;
        let head = rows
            .first()
            .ok_or_else(|| MetaError::Corrupt("no log_head row".into()))?;
        let head = (head.u64("seq")?, head.hash("hash")?);
        self.head = Some(head);
        Ok(head)
    }

    /// Stores a sealed event as the new head and applies it to the views.
    async fn write(&mut self, event: &Event, manifest: Option<&Manifest>) -> Result<(), MetaError> {
        let row = vec![
            i64_of(event.seq())?.into(),
            event.id().into(),
            event.type_name().into(),
            event.subject().into(),
            event.at().into(),
            event.canonical_bytes()[..].into(),
            event.hash().into(),
        ];
        self.tx.insert(Table::Events, row).await?;
        self.apply(&[(event, manifest)]).await?;
        self.head = Some((event.seq(), *event.hash()));
        self.head_moved = true;
        Ok(())
    }

    async fn apply(&mut self, events: &[(&Event, Option<&Manifest>)]) -> Result<(), MetaError> {
        apply(&mut self.tx, events).await?;
        if let Some((last, _)) = events.last() {
            self.applied = Some(last.seq());
        }
        Ok(())
    }

    /// Runs one write, marking the transaction failed if it fails.
    async fn guarded<T>(
        &mut self,
        write: impl AsyncFnOnce(&mut SqlTx) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        self.tx.refuse_if_failed()?;
        let result = write(self).await;
        if result.is_err() {
            self.tx.failed = true;
        }
        result
    }
}

#[async_trait]
impl MetaTx for SqlTx {
    async fn blob(&mut self, digest: &Digest) -> Result<Option<BlobRecord>, MetaError> {
        find_blob(&mut self.tx, digest).await
    }

    async fn blobs_by_sha256(&mut self, sha256: &[Hash]) -> Result<Vec<BlobRecord>, MetaError> {
        find_blobs(&mut self.tx, sha256).await
    }

    async fn stored_blobs(&mut self, sha256: &[Hash]) -> Result<Vec<BlobId>, MetaError> {
        find_blob_ids(&mut self.tx, sha256).await
    }

    async fn append(
        &mut self,
        draft: EventDraft,
        manifest: Option<&Manifest>,
    ) -> Result<Event, MetaError> {
        self.guarded(async |tx: &mut SqlTx| {
            let (seq, hash) = tx.head().await?;
            let event = draft.seal(seq + 1, hash);
            tx.write(&event, manifest).await?;
            Ok(event)
        })
        .await
    }

    async fn import(
        &mut self,
        event: &Event,
        manifest: Option<&Manifest>,
    ) -> Result<(), MetaError> {
        let (seq, hash) = self.head().await?;
        if event.seq() != seq + 1 || *event.prev() != hash {
            return Err(MetaError::Corrupt(format!(
                "event {} does not follow this log's head {seq}",
                event.seq()
            )));
        }
        self.guarded(async |tx: &mut SqlTx| tx.write(event, manifest).await)
            .await
    }

    async fn events_after(
        &mut self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, MetaError> {
        let args = [i64_of(after)?.into(), i64::from(limit).into()];
        all(self.tx.fetch(EVENTS_AFTER, &args).await?, stored_event)
    }

    async fn package(&mut self, id: &str) -> Result<Option<PackageRecord>, MetaError> {
        find_package(&mut self.tx, id).await
    }

    async fn hold(&mut self, package_id: &str, hold_id: &str) -> Result<Option<Hold>, MetaError> {
        let rows = self
            .tx
            .fetch(
                "SELECT * FROM holds WHERE package_id = ?1 AND hold_id = ?2",
                &[package_id.into(), hold_id.into()],
            )
            .await?;
        first(rows, hold_record)
    }

    async fn due_for_eligibility(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<PackageRecord>, MetaError> {
        let due = "current_expires_at IS NOT NULL AND eligible_for_deletion = 0 \
             AND current_expires_at <= ?1 AND active_holds = 0 ORDER BY current_expires_at";
        packages_by_retention(&mut self.tx, due, now, limit).await
    }

    async fn reset_views(&mut self) -> Result<(), MetaError> {
        self.guarded(async |tx: &mut SqlTx| {
            let tables = Table::VIEWS.map(Table::name);
            tx.driver.empty_tables(&mut tx.tx, &tables).await?;
            tx.tx
                .execute("UPDATE views_state SET applied_seq = 0 WHERE id = 1", &[])
                .await?;
            Ok(())
        })
        .await
    }

    async fn replay(&mut self, events: &[(&Event, Option<&Manifest>)]) -> Result<(), MetaError> {
        self.guarded(async |tx: &mut SqlTx| tx.apply(events).await)
            .await
    }

    async fn session_delete(&mut self, id: &str) -> Result<(), MetaError> {
        self.tx
            .execute("DELETE FROM upload_sessions WHERE id = ?1", &[id.into()])
            .await?;
        Ok(())
    }

    async fn collectable_packages(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<PackageRecord>, MetaError> {
        let collectable = "eligible_for_deletion = 1 AND deleted_seq IS NULL \
             AND active_holds = 0 AND current_expires_at <= ?1 ORDER BY package_id";
        packages_by_retention(&mut self.tx, collectable, now, limit).await
    }

    async fn exclusive_bytes(&mut self, package_id: &str) -> Result<u64, MetaError> {
        // CAST: PostgreSQL sums 64-bit integers as NUMERIC.
        let rows = self
            .tx
            .fetch(
                "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes FROM \
                 (SELECT DISTINCT f.sha256, f.size FROM package_files f WHERE f.package_id = ?1 \
                 AND NOT EXISTS (SELECT 1 FROM package_files g \
                     WHERE g.sha256 = f.sha256 AND g.package_id <> ?1) \
                 AND NOT EXISTS (SELECT 1 FROM packages p WHERE p.manifest_sha256 = f.sha256)) AS x",
                &[package_id.into()],
            )
            .await?;
        rows.first()
            .ok_or_else(|| MetaError::Corrupt("no sum".into()))?
            .u64("bytes")
    }

    async fn unreferenced_blobs(
        &mut self,
        cutoff: Timestamp,
        after: &Hash,
        limit: u32,
    ) -> Result<Vec<BlobRecord>, MetaError> {
        let rows = self
            .tx
            .fetch(
                "SELECT b.* FROM blobs b WHERE b.sha256 > ?1 AND b.stored_at <= ?2 \
                 AND NOT EXISTS (SELECT 1 FROM package_files f WHERE f.sha256 = b.sha256) \
                 AND NOT EXISTS (SELECT 1 FROM packages p WHERE p.manifest_sha256 = b.sha256) \
                 ORDER BY b.sha256 LIMIT ?3",
                &[after.into(), cutoff.into(), i64::from(limit).into()],
            )
            .await?;
        all(rows, blob_record)
    }

    async fn blob_at(
        &mut self,
        tier: Tier,
        location: &str,
    ) -> Result<Option<BlobRecord>, MetaError> {
        let rows = self
            .tx
            .fetch(
                "SELECT * FROM blobs WHERE location = ?1 AND tier = ?2",
                &[location.into(), tier.as_str().into()],
            )
            .await?;
        first(rows, blob_record)
    }

    async fn hot_packages_before(
        &mut self,
        classes: &[(String, Timestamp)],
        limit: u32,
    ) -> Result<Vec<PackageRecord>, MetaError> {
        if classes.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = Vec::new();
        let due = due_condition("p", classes, &mut args);
        args.push(i64::from(limit).into());
        let sql = format!(
            "{PACKAGE_SELECT} WHERE p.tier = 'hot' AND r.deleted_seq IS NULL AND ({due}) \
             ORDER BY p.created_at LIMIT ?{}",
            args.len()
        );
        all(self.tx.fetch(&sql, &args).await?, package_record)
    }

    async fn blobs_leaving_hot(
        &mut self,
        package_id: &str,
        classes: &[(String, Timestamp)],
    ) -> Result<Vec<BlobRecord>, MetaError> {
        let mut args: Vec<Arg> = vec![package_id.into()];
        let due = due_condition("q", classes, &mut args);
        // Another live, hot package that is not due keeps a blob hot, by a
        // file or by its manifest.
        let keeps = format!(
            "SELECT 1 FROM packages q JOIN retention_state rq ON rq.package_id = q.id \
             WHERE q.id <> ?1 AND q.tier = 'hot' AND rq.deleted_seq IS NULL AND NOT ({due})"
        );
        let sql = format!(
            "SELECT b.* FROM blobs b WHERE b.tier = 'hot' AND b.sha256 IN \
             (SELECT f.sha256 FROM package_files f WHERE f.package_id = ?1 \
              UNION SELECT p.manifest_sha256 FROM packages p WHERE p.id = ?1) \
             AND NOT EXISTS ({keeps} AND EXISTS (SELECT 1 FROM package_files g \
                 WHERE g.package_id = q.id AND g.sha256 = b.sha256)) \
             AND NOT EXISTS ({keeps} AND q.manifest_sha256 = b.sha256) \
             ORDER BY b.sha256"
        );
        all(self.tx.fetch(&sql, &args).await?, blob_record)
    }

    async fn known_locations(
        &mut self,
        tier: Tier,
        locations: &[String],
    ) -> Result<HashSet<String>, MetaError> {
        if locations.is_empty() {
            return Ok(HashSet::new());
        }
        let marks: Vec<String> = (2..=locations.len() + 1).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "SELECT location FROM blobs WHERE tier = ?1 AND location IN ({})",
            marks.join(", ")
        );
        let mut args: Vec<Arg> = vec![tier.as_str().into()];
        args.extend(locations.iter().map(Arg::from));
        let rows = self.tx.fetch(&sql, &args).await?;
        rows.iter().map(|r| r.text("location")).collect()
    }

    async fn commit(mut self: Box<Self>) -> Result<(), MetaError> {
        let mut last = Vec::new();
        if let (Some((seq, hash)), true) = (self.head, self.head_moved) {
            last.push(Statement::new(
                "UPDATE log_head SET seq = ?1, hash = ?2 WHERE id = 1",
                vec![i64_of(seq)?.into(), (&hash).into()],
            ));
        }
        if let Some(seq) = self.applied {
            last.push(Statement::new(
                "UPDATE views_state SET applied_seq = ?1 WHERE id = 1",
                vec![i64_of(seq)?.into()],
            ));
        }
        self.tx.commit(last).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_statements_bind_their_arguments_in_order() {
        let statements = [
            Statement::new(
                "INSERT INTO t VALUES (?1, ?2), (?3, ?4)",
                vec![1.into(), "a".into(), 2.into(), "b".into()],
            ),
            Statement::new("UPDATE u SET x = ?1 WHERE id = 1", vec![3.into()]),
            Statement::new("DELETE FROM v", vec![]),
        ];
        let (sql, args) = joined(&statements).unwrap();
        assert_eq!(
            sql,
            "INSERT INTO t VALUES (?, ?), (?, ?);\nUPDATE u SET x = ? WHERE id = 1;\nDELETE FROM v;\n"
        );
        assert_eq!(
            args,
            vec![1.into(), "a".into(), 2.into(), "b".into(), 3.into()]
        );
    }

    #[test]
    fn statements_not_numbered_in_order_are_not_joined() {
        let one = |sql: &str, n: i64| Statement::new(sql, (1..=n).map(Arg::from).collect());
        // Out of order, repeated, a number skipped, an argument unused.
        for bad in [
            one("UPDATE t SET a = ?2, b = ?1", 2),
            one("SELECT ?1 WHERE ?1 > 0", 1),
            one("SELECT ?1, ?3", 3),
            one("SELECT ?1", 2),
        ] {
            let statements = [one("SELECT ?1", 1), bad];
            assert_eq!(joined(&statements), None, "{:?}", statements[1].sql);
        }
    }
}
