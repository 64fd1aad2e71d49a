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
