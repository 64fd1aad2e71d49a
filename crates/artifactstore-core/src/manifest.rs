//! Manifest v1: the canonical description of a package (DESIGN.md §3).
//!
//! A manifest is a canonical CBOR map; its SHA-256/BLAKE3 digest pair is the
//! package's content identity. Validation lives here and only here: the
//! engine, the server and the CLI all go through [`Manifest::new`] or
//! [`Manifest::decode`].

use std::collections::BTreeMap;

use crate::cbor::{self, Map, Value};
use crate::digest::BlobId;
use crate::jcs::MAX_SAFE_INTEGER;

pub const SCHEMA_V1: &str = "artifactstore.manifest.v1";
pub const MAX_NAME_LEN: usize = 255;
pub const MAX_PATH_LEN: usize = 4096;

/// One file of a package: where it sits and which blob holds its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub blob: BlobId,
    pub media_type: Option<String>,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    name: String,
    files: Vec<FileEntry>,
    annotations: BTreeMap<String, String>,
}

/// Why a manifest was refused; each variant has a stable machine code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Cbor(#[from] cbor::DecodeError),
    #[error("manifest must be a map")]
    NotAMap,
    #[error("schema must be {SCHEMA_V1:?}")]
    Schema,
    #[error("missing field {0:?}")]
    MissingField(&'static str),
    #[error("unknown field {0:?}")]
    UnknownField(String),
    #[error("field {0:?} has the wrong type")]
    WrongType(&'static str),
    #[error(
        "invalid package name {0:?}: must follow the OCI repository-name grammar, at most {MAX_NAME_LEN} bytes"
    )]
    InvalidName(String),
    #[error("invalid file path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("files must be sorted by path with no duplicates (at {0:?})")]
    UnsortedPaths(String),
    #[error("size of {0:?} exceeds 2^53 - 1")]
    SizeTooLarge(String),
    #[error("digest of {0:?} must be 32 bytes (64 lowercase hex characters in JSON)")]
    DigestLength(String),
    #[error("invalid media type {0:?}")]
    InvalidMediaType(String),
    #[error("annotations must be omitted when empty, and keys must be non-empty")]
    InvalidAnnotations,
}

impl ManifestError {
    /// A stable machine code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            ManifestError::Cbor(_) => "manifest-not-canonical",
            ManifestError::NotAMap
            | ManifestError::Schema
            | ManifestError::MissingField(_)
            | ManifestError::UnknownField(_)
            | ManifestError::WrongType(_) => "manifest-malformed",
            ManifestError::InvalidName(_) => "invalid-package-name",
            ManifestError::InvalidPath { .. } => "invalid-file-path",
            ManifestError::UnsortedPaths(_) => "unsorted-file-paths",
            ManifestError::SizeTooLarge(_) => "size-too-large",
            ManifestError::DigestLength(_) => "manifest-malformed",
            ManifestError::InvalidMediaType(_) => "invalid-media-type",
            ManifestError::InvalidAnnotations => "invalid-annotations",
        }
    }
}

impl Manifest {
    /// Validates and builds a manifest. `files` must already be sorted by
    /// path: sorting silently would hide a client bug that changes identity.
    pub fn new(
        name: String,
        files: Vec<FileEntry>,
        annotations: BTreeMap<String, String>,
    ) -> Result<Manifest, ManifestError> {
        validate_name(&name)?;
        for (i, f) in files.iter().enumerate() {
            validate_path(&f.path)?;
            if i > 0 && files[i - 1].path.as_bytes() >= f.path.as_bytes() {
                return Err(ManifestError::UnsortedPaths(f.path.clone()));
            }
            if f.blob.size > MAX_SAFE_INTEGER {
                return Err(ManifestError::SizeTooLarge(f.path.clone()));
            }
            if let Some(mt) = &f.media_type {
                validate_media_type(mt)?;
            }
        }
        if annotations.keys().any(String::is_empty) {
            return Err(ManifestError::InvalidAnnotations);
        }
        Ok(Manifest {
            name,
            files,
            annotations,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }
    pub fn annotations(&self) -> &BTreeMap<String, String> {
        &self.annotations
    }
    /// The sum of the file sizes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.blob.size).sum()
    }

    pub fn to_value(&self) -> Value {
        let files = self
            .files
            .iter()
            .map(|f| {
                let mut m = Map::new()
                    .with("path", Value::text(&f.path))
                    .with("size", Value::Unsigned(f.blob.size))
                    .with("sha256", Value::Bytes(f.blob.sha256.to_vec()))
                    .with("blake3", Value::Bytes(f.blob.blake3.to_vec()));
                if let Some(mt) = &f.media_type {
                    m = m.with("media_type", Value::text(mt));
                }
                Value::Map(m)
            })
            .collect();
        let mut m = Map::new()
            .with("schema", Value::text(SCHEMA_V1))
            .with("name", Value::text(&self.name))
            .with("files", Value::Array(files));
        if !self.annotations.is_empty() {
            let ann = self
                .annotations
                .iter()
                .fold(Map::new(), |m, (k, v)| m.with(k, Value::text(v)));
            m = m.with("annotations", Value::Map(ann));
        }
        Value::Map(m)
    }

    /// The canonical bytes whose digests identify the package.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        self.to_value().to_canonical_bytes()
    }

    /// Decodes canonical bytes strictly and validates the result.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        Manifest::from_value(&cbor::decode(bytes)?)
    }

    /// Reads a manifest from a decoded canonical CBOR value, validating it.
    pub fn from_value(value: &Value) -> Result<Manifest, ManifestError> {
        Manifest::read(value, Form::Cbor)
    }

    /// Reads a manifest from its JSON (JCS) form, where the digests are
    /// lowercase hex text instead of byte strings; validation is the same.
    pub fn from_json_value(value: &Value) -> Result<Manifest, ManifestError> {
        Manifest::read(value, Form::Json)
    }

    fn read(value: &Value, form: Form) -> Result<Manifest, ManifestError> {
        let m = value.as_map().ok_or(ManifestError::NotAMap)?;
        check_fields::<ManifestError>(m, &["schema", "name", "files"], &["annotations"])?;
        if text_field(m, "schema")? != SCHEMA_V1 {
            return Err(ManifestError::Schema);
        }
        let name = text_field(m, "name")?.to_owned();
        let files = m
            .get("files")
            .and_then(Value::as_array)
            .ok_or(ManifestError::WrongType("files"))?
            .iter()
            .map(|f| file_from_value(f, form))
            .collect::<Result<Vec<_>, _>>()?;
        let annotations = match m.get("annotations") {
            None => BTreeMap::new(),
            Some(Value::Map(a)) if !a.is_empty() => a
                .iter()
                .map(|(k, v)| match (k, v) {
                    (Value::Text(k), Value::Text(v)) => Ok((k.clone(), v.clone())),
                    _ => Err(ManifestError::WrongType("annotations")),
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Map(_)) => return Err(ManifestError::InvalidAnnotations),
            Some(_) => return Err(ManifestError::WrongType("annotations")),
        };
        Manifest::new(name, files, annotations)
    }
}

/// Byte strings are CBOR byte strings, or lowercase hex text in JSON.
#[derive(Debug, Clone, Copy)]
enum Form {
    Cbor,
    Json,
}

fn file_from_value(v: &Value, form: Form) -> Result<FileEntry, ManifestError> {
    let m = v.as_map().ok_or(ManifestError::WrongType("files"))?;
    check_fields::<ManifestError>(m, &["path", "size", "sha256", "blake3"], &["media_type"])?;
    let path = text_field(m, "path")?.to_owned();
    let size = m
        .get("size")
        .and_then(Value::as_u64)
        .ok_or(ManifestError::WrongType("size"))?;
    let digest = |key: &'static str| -> Result<[u8; 32], ManifestError> {
        let field = m.get(key).ok_or(ManifestError::MissingField(key))?;
        match (form, field) {
            (Form::Cbor, Value::Bytes(b)) => b
                .as_slice()
                .try_into()
                .map_err(|_| ManifestError::DigestLength(path.clone())),
            (Form::Json, Value::Text(t)) => {
                crate::digest::parse_hex32(t).map_err(|_| ManifestError::DigestLength(path.clone()))
            }
            _ => Err(ManifestError::WrongType(key)),
        }
    };
    let blob = BlobId {
        sha256: digest("sha256")?,
        blake3: digest("blake3")?,
        size,
    };
    let media_type = match m.get("media_type") {
        None => None,
        Some(v) => Some(
            v.as_text()
                .ok_or(ManifestError::WrongType("media_type"))?
                .to_owned(),
        ),
    };
    Ok(FileEntry {
        path,
        blob,
        media_type,
    })
}

/// Requires every `required` key, allows the `optional` ones, refuses others.
pub(crate) fn check_fields<E: From<FieldError>>(
    m: &Map,
    required: &[&'static str],
    optional: &[&'static str],
) -> Result<(), E> {
    for (k, _) in m.iter() {
        let k = k
            .as_text()
            .ok_or_else(|| FieldError::UnknownField(format!("{k:?}")))?;
        if !required.contains(&k) && !optional.contains(&k) {
            return Err(FieldError::UnknownField(k.to_owned()).into());
        }
    }
    if let Some(missing) = required.iter().find(|k| m.get(k).is_none()) {
        return Err(FieldError::MissingField(missing).into());
    }
    Ok(())
}

/// The field-level failures shared by every record decoded from a map.
#[derive(Debug)]
pub(crate) enum FieldError {
    MissingField(&'static str),
    UnknownField(String),
}

impl From<FieldError> for ManifestError {
    fn from(e: FieldError) -> Self {
        match e {
            FieldError::MissingField(k) => ManifestError::MissingField(k),
            FieldError::UnknownField(k) => ManifestError::UnknownField(k),
        }
    }
}

fn text_field<'a>(m: &'a Map, key: &'static str) -> Result<&'a str, ManifestError> {
    m.get(key)
        .and_then(Value::as_text)
        .ok_or(ManifestError::WrongType(key))
}

/// The OCI distribution repository-name grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    let invalid = || ManifestError::InvalidName(name.to_owned());
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid());
    }
    for component in name.split('/') {
        let b = component.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return Err(invalid());
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
            if !ok {
                return Err(invalid());
            }
        }
    }
    Ok(())
}

/// Relative POSIX paths that cannot escape the package root.
pub fn validate_path(path: &str) -> Result<(), ManifestError> {
    let reason = if path.is_empty() {
        Some("empty")
    } else if path.len() > MAX_PATH_LEN {
        Some("longer than 4096 bytes")
    } else if path.starts_with('/') {
        Some("absolute")
    } else if path.contains('\0') {
        Some("contains NUL")
    } else if path.split('/').any(str::is_empty) {
        Some("empty segment")
    } else if path.split('/').any(|s| s == "." || s == "..") {
        Some("'.' or '..' segment")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ManifestError::InvalidPath {
            path: path.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `type/subtype[; params]` with no controls, at most 255 bytes.
fn validate_media_type(mt: &str) -> Result<(), ManifestError> {
    let essence = mt.split(';').next().unwrap_or_default();
    let ok = mt.len() <= 255
        && !mt.chars().any(char::is_control)
        && essence
            .split_once('/')
            .is_some_and(|(t, s)| !t.is_empty() && !s.is_empty() && !essence.contains(' '));
    if ok {
        Ok(())
    } else {
        Err(ManifestError::InvalidMediaType(mt.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(path: &str, content: &[u8]) -> FileEntry {
        FileEntry {
            path: path.into(),
            blob: BlobId::of(content),
            media_type: None,
        }
    }

    type Entries = Vec<(Value, Value)>;

    fn sample() -> Manifest {
        let mut junit = file("report/junit.xml", b"<testsuite/>");
        junit.media_type = Some("application/xml".into());
        Manifest::new(
            "guide-board/runs".into(),
            vec![file("logs/run.log", b"ok\n"), junit],
            BTreeMap::from([("run.id".to_owned(), "2026-11-28.3".to_owned())]),
        )
        .unwrap()
    }

    #[test]
    fn hand_checked_encoding_of_an_empty_package() {
        let m = Manifest::new("a".into(), vec![], BTreeMap::new()).unwrap();
        // {"name": "a", "files": [], "schema": "artifactstore.manifest.v1"}
        // keys sorted shorter-first: name(4) < files(5) < schema(6).
        let want = concat!(
            "a3",
            "646e616d65",
            "6161",
            "6566696c6573",
            "80",
            "66736368656d61",
            "7819",
            "6172746966616374",
            "73746f72652e6d61",
            "6e69666573742e76",
            "31"
        );
        assert_eq!(hex::encode(m.to_canonical_bytes()), want);
    }

    #[test]
    fn round_trips_through_canonical_bytes() {
        let m = sample();
        let bytes = m.to_canonical_bytes();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(m.total_size(), 3 + 12);
    }

    #[test]
    fn json_form_reads_back_the_jcs_projection() {
        let m = sample();
        let jcs = crate::jcs::to_jcs(&m.to_value()).unwrap();
        let parsed = crate::jcs::parse_json(&jcs).unwrap();
        assert_eq!(Manifest::from_json_value(&parsed).unwrap(), m);
        // Byte strings are not accepted as text in CBOR, nor the reverse.
        assert!(Manifest::from_value(&parsed).is_err());
        assert!(Manifest::from_json_value(&m.to_value()).is_err());
        let bad = jcs.replacen(&hex::encode(m.files()[0].blob.sha256), "sha256:00", 1);
        assert_eq!(
            Manifest::from_json_value(&crate::jcs::parse_json(&bad).unwrap()).unwrap_err(),
            ManifestError::DigestLength("logs/run.log".into())
        );
    }

    #[test]
    fn oci_name_grammar() {
        for ok in ["a", "guide-board/runs", "a.b_c__d---e/f0", "x/y/z", "0"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a//b",
            "/a",
            "a/",
            "a..b",
            "a___b",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn path_rules() {
        for ok in ["a", "a/b.txt", "..a/b..", ".hidden", "a\\b"] {
            assert!(validate_path(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(4097);
        for bad in [
            "",
            "/etc/passwd",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "../x",
            "a/..",
            "a\0b",
            long.as_str(),
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_unsorted_or_duplicate_paths_and_oversized_files() {
        let unsorted = Manifest::new(
            "a".into(),
            vec![file("b", b""), file("a", b"")],
            BTreeMap::new(),
        );
        assert_eq!(
            unsorted.unwrap_err(),
            ManifestError::UnsortedPaths("a".into())
        );
        let dup = Manifest::new(
            "a".into(),
            vec![file("a", b""), file("a", b"x")],
            BTreeMap::new(),
        );
        assert_eq!(dup.unwrap_err(), ManifestError::UnsortedPaths("a".into()));
        let mut big = file("a", b"");
        big.blob.size = MAX_SAFE_INTEGER + 1;
        assert_eq!(
            Manifest::new("a".into(), vec![big], BTreeMap::new()).unwrap_err(),
            ManifestError::SizeTooLarge("a".into())
        );
    }

    #[test]
    fn strict_decoding() {
        let good = sample().to_value();
        let Value::Map(m) = good.clone() else {
            unreachable!()
        };
        let mutate = |f: &dyn Fn(&mut Entries)| {
            let mut entries: Vec<_> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            f(&mut entries);
            Manifest::from_value(&Value::Map(Map::from_entries(entries).unwrap()))
        };
        assert_eq!(
            mutate(&|e| e.push((Value::text("extra"), Value::Null))).unwrap_err(),
            ManifestError::UnknownField("extra".into())
        );
        assert_eq!(
            mutate(&|e| e.retain(|(k, _)| k.as_text() != Some("name"))).unwrap_err(),
            ManifestError::MissingField("name")
        );
        assert_eq!(
            mutate(&|e| {
                e.retain(|(k, _)| k.as_text() != Some("annotations"));
                e.push((Value::text("annotations"), Value::Map(Map::new())));
            })
            .unwrap_err(),
            ManifestError::InvalidAnnotations
        );
        assert_eq!(
            mutate(&|e| {
                e.retain(|(k, _)| k.as_text() != Some("schema"));
                e.push((
                    Value::text("schema"),
                    Value::text("artifactstore.manifest.v2"),
                ));
            })
            .unwrap_err(),
            ManifestError::Schema
        );
        // Non-canonical bytes of a valid manifest are refused: one trailing byte.
        let mut bytes = good.to_canonical_bytes();
        bytes.push(0);
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Cbor(_))
        ));
    }

    proptest! {
        #[test]
        fn valid_manifests_round_trip(
            name in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
            paths in proptest::collection::btree_set("[a-z]{1,6}(/[a-z]{1,6}){0,2}", 0..8),
            sizes in proptest::collection::vec(0u64..=MAX_SAFE_INTEGER, 8),
        ) {
            let files: Vec<FileEntry> = paths.iter().zip(&sizes).map(|(p, s)| {
                let mut f = file(p, p.as_bytes());
                f.blob.size = *s;
                f
            }).collect();
            let m = Manifest::new(name, files, BTreeMap::new()).unwrap();
            let bytes = m.to_canonical_bytes();
            prop_assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        }
    }
}
