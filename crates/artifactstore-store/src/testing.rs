//! Where the scale-out backends for tests are: the servers `.ci/services`
//! starts, named by environment variables. Without them a test of those
//! backends is skipped with a note, except under `CI=true`, where a missing
//! server fails the test: CI never passes by skipping.

/// The PostgreSQL url for tests (`ARTIFACTSTORE_TEST_POSTGRES`), if any.
///
/// # Panics
/// Under `CI=true` when the variable is unset.
pub fn postgres_url() -> Option<String> {
    required("ARTIFACTSTORE_TEST_POSTGRES")
}

/// Settings for a test bucket (`ARTIFACTSTORE_TEST_S3` names the endpoint,
/// `…_KEY`, `…_SECRET` and `…_BUCKET` the rest), under a fresh key prefix
/// so that every store made from them is empty. Parts are as small as S3
/// allows, so tests cross part boundaries with little data.
///
/// # Panics
/// Under `CI=true` when the endpoint is unset.
pub fn s3_settings() -> Option<crate::blob::s3::S3Settings> {
    let endpoint = required("ARTIFACTSTORE_TEST_S3")?;
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut bucket = var("ARTIFACTSTORE_TEST_S3_BUCKET").unwrap_or_else(|| "artifactstore".into());
    // s3s-fs lists a bucket by walking all of it, whatever the prefix: a
    // bucket per store keeps each listing to the store's own objects. It
    // keeps a bucket as a directory of its root, so one is made by mkdir.
    if let Some(root) = var("ARTIFACTSTORE_TEST_S3FS_ROOT") {
        let own = format!("t-{}", &uuid::Uuid::now_v7().simple().to_string()[12..]);
        if std::fs::create_dir(std::path::Path::new(&root).join(&own)).is_ok() {
            bucket = own;
        }
    }
    Some(crate::blob::s3::S3Settings {
        endpoint: Some(endpoint),
        bucket,
        region: "us-east-1".into(),
        access_key_id: var("ARTIFACTSTORE_TEST_S3_KEY"),
        secret_access_key: var("ARTIFACTSTORE_TEST_S3_SECRET"),
        // Short: s3s-fs keeps an upload's metadata in one file whose name
        // holds the bucket and key in base64, and a name has 255 bytes.
        prefix: format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
        part_size: crate::blob::s3::MIN_PART_SIZE,
    })
}

/// A fresh schema name for one test store.
pub fn fresh_schema() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("t_{id}")
}

fn required(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{var} is not set; under CI=true the scale-out tests must run (.ci/services)")
        }
        _ => {
            eprintln!("skipped: {var} is not set (start the servers with .ci/services)");
            None
        }
    }
}

/// The two backend pairs every engine test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairKind {
    /// SQLite and the local filesystem.
    Embedded,
    /// PostgreSQL and S3.
    ScaleOut,
}

/// A store's place on one backend pair: opened as often as a test likes
/// (each [`TestPair::open`] is a fresh engine on the same data, as after a
/// restart), and empty at first.
#[derive(Debug)]
pub struct TestPair {
    kind: PairKind,
    dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
    s3: Option<crate::blob::s3::S3Settings>,
}

impl TestPair {
    /// `None` for the scale-out pair when its servers are not configured
    /// (outside CI; under `CI=true` that panics instead).
    pub fn new(kind: PairKind) -> Option<TestPair> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (postgres, s3) = match kind {
            PairKind::Embedded => (None, None),
            PairKind::ScaleOut => (
                Some((postgres_url()?, fresh_schema())),
                Some(s3_settings()?),
            ),
        };
        Some(TestPair {
            kind,
            dir,
            postgres,
            s3,
        })
    }

    pub fn kind(&self) -> PairKind {
        self.kind
    }

    /// A directory of the test's own: the embedded pair's data directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The metadata url of this pair's store (the scale-out pair's lives in
    /// a schema of its own: [`TestPair::postgres_schema`]).
    pub fn metadata_url(&self) -> String {
        match &self.postgres {
            Some((url, _)) => url.clone(),
            None => format!("sqlite://{}", self.dir().join("meta.sqlite").display()),
        }
    }

    pub fn postgres_schema(&self) -> Option<&str> {
        self.postgres.as_ref().map(|(_, s)| s.as_str())
    }

    pub fn s3(&self) -> Option<&crate::blob::s3::S3Settings> {
        self.s3.as_ref()
    }

    /// A second handle on this pair's metadata store, as another process
    /// has.
    pub async fn metadata(&self) -> crate::meta::sql::SqlMetadata {
        match &self.postgres {
            Some((url, schema)) => crate::meta::postgres::open_in_schema(url, schema).await,
            None => crate::meta::sqlite::open_path(&self.dir().join("meta.sqlite")).await,
        }
        .expect("open the metadata store")
    }

    /// Replaces the bytes stored at `location` behind the store's back, as
    /// a failing disk or a careless operator would.
    pub async fn overwrite_blob(&self, location: &str, bytes: Vec<u8>) {
        match &self.s3 {
            None => std::fs::write(self.dir().join(location), &bytes).expect("overwrite"),
            Some(s3) => {
                use object_store::ObjectStoreExt as _;
                let mut raw = object_store::aws::AmazonS3Builder::new()
                    .with_allow_http(true)
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region);
                if let Some(e) = &s3.endpoint {
                    raw = raw.with_endpoint(e);
                }
                if let (Some(k), Some(x)) = (&s3.access_key_id, &s3.secret_access_key) {
                    raw = raw.with_access_key_id(k).with_secret_access_key(x);
                }
                let raw = raw.build().expect("S3 client");
                let key = object_store::path::Path::from(format!("{}/{location}", s3.prefix));
                raw.put(&key, bytes.into()).await.expect("overwrite");
            }
        }
    }

    /// Like [`TestPair::open`], with a cold tier of the pair's kind: a
    /// second directory, or a second prefix in the bucket.
    pub async fn open_tiered(&self, options: crate::StoreOptions) -> crate::Store {
        let store = self.open(options).await;
        let cold: std::sync::Arc<dyn crate::blob::BlobBackend> = match &self.s3 {
            None => std::sync::Arc::new(
                crate::blob::fs::FsBlobStore::open(self.dir().join("cold"))
                    .await
                    .expect("open the cold directory"),
            ),
            Some(s3) => {
                let mut cold = s3.clone();
                cold.prefix = format!("{}c", s3.prefix);
                std::sync::Arc::new(crate::blob::s3::S3BlobStore::open(&cold).expect("open S3"))
            }
        };
        store.with_cold_tier(cold)
    }

    pub async fn open(&self, options: crate::StoreOptions) -> crate::Store {
        match (&self.postgres, &self.s3) {
            (Some((url, schema)), Some(s3)) => {
                let meta = crate::meta::postgres::open_in_schema(url, schema)
                    .await
                    .expect("open PostgreSQL");
                let blobs = crate::blob::s3::S3BlobStore::open(s3).expect("open S3");
                crate::Store::new(
                    std::sync::Arc::new(meta),
                    std::sync::Arc::new(blobs),
                    options,
                )
            }
            _ => crate::Store::open_embedded(self.dir(), None, options)
                .await
                .expect("open the embedded store"),
        }
    }
}

/// Staging objects of `store`'s blob backend.
pub async fn staging_count(store: &crate::Store) -> usize {
    store
        .blob_backend()
        .staging_list()
        .await
        .expect("staging list")
        .len()
}

/// Blobs (stored bytes, named by a row or not) of `store`'s blob backend.
pub async fn blob_count(store: &crate::Store) -> usize {
    let blobs = store.blob_backend();
    let (mut after, mut n) = (String::new(), 0);
    loop {
        let page = blobs.list_after(&after, 1000).await.expect("blob list");
        let Some(last) = page.last() else { return n };
        n += page.len();
        after = last.clone();
    }
}

/// Runs each named `async fn(TestPair)` of the calling module on both
/// backend pairs, as the tests `embedded::<name>` and `scale_out::<name>`.
#[macro_export]
macro_rules! on_both_pairs {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let pair = $crate::testing::TestPair::new($crate::testing::PairKind::Embedded)
                        .expect("the embedded pair needs no server");
                    super::$name(pair).await
                }
            )*
        }
        mod scale_out {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if let Some(pair) = $crate::testing::TestPair::new($crate::testing::PairKind::ScaleOut) {
                        super::$name(pair).await
                    }
                }
            )*
        }
    };
}

/// A new, empty database on the test PostgreSQL server (for a store whose
/// processes take only a url, as `serve` does); its url.
///
/// # Panics
/// Under `CI=true` when the server is not configured, or on any error.
pub async fn fresh_postgres_database() -> Option<String> {
    let url = postgres_url()?;
    Some(create_database(&url).await.expect("create a test database"))
}

/// Creates a new, empty database, with a fresh name, on the PostgreSQL
/// server that `url` (a url of any database on it) points at; its url.
pub async fn create_database(url: &str) -> Result<String, sqlx::Error> {
    use sqlx::Connection as _;
    let name = fresh_schema();
    let mut conn = sqlx::PgConnection::connect(url).await?;
    // The name is letters and digits only, safe to splice into SQL.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    let server = url.rsplit_once('/').map_or(url, |(server, _)| server);
    Ok(format!("{server}/{name}"))
}
