//! The event envelope, the v1 event types and the hash chain (DESIGN.md §3).
//!
//! An event is a canonical CBOR map; its hash is BLAKE3 of those bytes, and
//! each event carries the hash of its predecessor in `prev`, so editing,
//! removing, inserting or reordering history breaks the chain at a seq that
//! [`ChainVerifier`] names.

use crate::cbor::{self, Map, Value};
use crate::digest::BlobId;
use crate::jcs::MAX_SAFE_INTEGER;
use crate::manifest::{FieldError, check_fields};
use crate::time::Timestamp;

pub type Hash = [u8; 32];

/// `prev` of the first event.
pub const GENESIS_PREV: Hash = [0; 32];

/// The typed payload of each v1 event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData {
    /// A blob became visible. `location` says where its bytes live in the
    /// blob backend, so the `blobs` view can be rebuilt from the log alone.
    BlobStored {
        blob: BlobId,
        location: String,
    },
    PackageCreated {
        name: String,
        manifest_sha256: Hash,
        manifest_blake3: Hash,
        file_count: u64,
        total_size: u64,
        retention_class: String,
    },
    RetentionDefaultApplied {
        class: String,
        expires_at: Option<Timestamp>,
    },
    RetentionExtended {
        previous_expires_at: Timestamp,
        new_expires_at: Timestamp,
        reason: String,
    },
    RetentionHoldApplied {
        hold_id: String,
        reason: String,
    },
    RetentionHoldReleased {
        hold_id: String,
        reason: String,
    },
    RetentionDeletionEligible {
        expires_at: Timestamp,
        evaluated_at: Timestamp,
    },
    PackageDeleted {
        reason: String,
        bytes_freed: u64,
    },
    BlobDeleted {
        blob: BlobId,
    },
    /// A package moved to another retrieval tier (`"cold"`). `moved` lists
    /// the blobs whose bytes moved with it, each with its new location; a
    /// blob another package still needs hot stays, and moves with the last
    /// of them.
    PackageTierChanged {
        tier: String,
        moved: Vec<MovedBlob>,
    },
}

/// A blob a tier change moved, and where its bytes are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedBlob {
    pub blob: BlobId,
    pub location: String,
}

impl EventData {
    /// The pinned type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventData::BlobStored { .. } => "v1.blob.stored",
            EventData::PackageCreated { .. } => "v1.package.created",
            EventData::RetentionDefaultApplied { .. } => "v1.retention.default_applied",
            EventData::RetentionExtended { .. } => "v1.retention.extended",
            EventData::RetentionHoldApplied { .. } => "v1.retention.hold_applied",
            EventData::RetentionHoldReleased { .. } => "v1.retention.hold_released",
            EventData::RetentionDeletionEligible { .. } => "v1.retention.deletion_eligible",
            EventData::PackageDeleted { .. } => "v1.package.deleted",
            EventData::BlobDeleted { .. } => "v1.blob.deleted",
            EventData::PackageTierChanged { .. } => "v1.package.tier_changed",
        }
    }

    fn to_value(&self) -> Map {
        let ts = |t: &Timestamp| Value::text(t.to_string());
        let bytes = |h: &Hash| Value::Bytes(h.to_vec());
        let blob_fields = |b: &BlobId| {
            Map::new()
                .with("sha256", bytes(&b.sha256))
                .with("blake3", bytes(&b.blake3))
                .with("size", Value::Unsigned(b.size))
        };
        match self {
            EventData::BlobStored { blob, location } => {
                blob_fields(blob).with("location", Value::text(location))
            }
            EventData::PackageCreated {
                name,
                manifest_sha256,
                manifest_blake3,
                file_count,
                total_size,
                retention_class,
            } => Map::new()
                .with("name", Value::text(name))
                .with("manifest_sha256", bytes(manifest_sha256))
                .with("manifest_blake3", bytes(manifest_blake3))
                .with("file_count", Value::Unsigned(*file_count))
                .with("total_size", Value::Unsigned(*total_size))
                .with("retention_class", Value::text(retention_class)),
            EventData::RetentionDefaultApplied { class, expires_at } => Map::new()
                .with("class", Value::text(class))
                .with("expires_at", expires_at.as_ref().map_or(Value::Null, ts)),
            EventData::RetentionExtended {
                previous_expires_at,
                new_expires_at,
                reason,
            } => Map::new()
                .with("previous_expires_at", ts(previous_expires_at))
                .with("new_expires_at", ts(new_expires_at))
                .with("reason", Value::text(reason)),
            EventData::RetentionHoldApplied { hold_id, reason }
            | EventData::RetentionHoldReleased { hold_id, reason } => Map::new()
                .with("hold_id", Value::text(hold_id))
                .with("reason", Value::text(reason)),
            EventData::RetentionDeletionEligible {
                expires_at,
                evaluated_at,
            } => Map::new()
                .with("expires_at", ts(expires_at))
                .with("evaluated_at", ts(evaluated_at)),
            EventData::PackageDeleted {
                reason,
                bytes_freed,
            } => Map::new()
                .with("reason", Value::text(reason))
                .with("bytes_freed", Value::Unsigned(*bytes_freed)),
            EventData::BlobDeleted { blob } => blob_fields(blob),
            EventData::PackageTierChanged { tier, moved } => {
                Map::new().with("tier", Value::text(tier)).with(
                    "moved",
                    Value::Array(
                        moved
                            .iter()
                            .map(|m| {
                                Value::Map(
                                    blob_fields(&m.blob).with("location", Value::text(&m.location)),
                                )
                            })
                            .collect(),
                    ),
                )
            }
        }
    }

    fn from_value(type_name: &str, m: &Map) -> Result<EventData, EventError> {
        let r = Reader(m);
        let fields =
            |req: &[&'static str], opt: &[&'static str]| check_fields::<EventError>(m, req, opt);
        let blob = || -> Result<BlobId, EventError> {
            Ok(BlobId {
                sha256: r.hash("sha256")?,
                blake3: r.hash("blake3")?,
                size: r.uint("size")?,
            })
        };
        Ok(match type_name {
            "v1.blob.stored" => {
                fields(&["sha256", "blake3", "size", "location"], &[])?;
                EventData::BlobStored {
                    blob: blob()?,
                    location: r.text("location")?,
                }
            }
            "v1.package.created" => {
                fields(
                    &[
                        "name",
                        "manifest_sha256",
                        "manifest_blake3",
                        "file_count",
                        "total_size",
                        "retention_class",
                    ],
                    &[],
                )?;
                EventData::PackageCreated {
                    name: r.text("name")?,
                    manifest_sha256: r.hash("manifest_sha256")?,
                    manifest_blake3: r.hash("manifest_blake3")?,
                    file_count: r.uint("file_count")?,
                    total_size: r.uint("total_size")?,
                    retention_class: r.text("retention_class")?,
                }
            }
            "v1.retention.default_applied" => {
                fields(&["class", "expires_at"], &[])?;
                EventData::RetentionDefaultApplied {
                    class: r.text("class")?,
                    expires_at: match m.get("expires_at") {
                        Some(Value::Null) => None,
                        _ => Some(r.timestamp("expires_at")?),
                    },
                }
            }
            "v1.retention.extended" => {
                fields(&["previous_expires_at", "new_expires_at", "reason"], &[])?;
                EventData::RetentionExtended {
                    previous_expires_at: r.timestamp("previous_expires_at")?,
                    new_expires_at: r.timestamp("new_expires_at")?,
                    reason: r.text("reason")?,
                }
            }
            "v1.retention.hold_applied" | "v1.retention.hold_released" => {
                fields(&["hold_id", "reason"], &[])?;
                let (hold_id, reason) = (r.text("hold_id")?, r.text("reason")?);
                if type_name == "v1.retention.hold_applied" {
                    EventData::RetentionHoldApplied { hold_id, reason }
                } else {
                    EventData::RetentionHoldReleased { hold_id, reason }
                }
            }
            "v1.retention.deletion_eligible" => {
                fields(&["expires_at", "evaluated_at"], &[])?;
                EventData::RetentionDeletionEligible {
                    expires_at: r.timestamp("expires_at")?,
                    evaluated_at: r.timestamp("evaluated_at")?,
                }
            }
            "v1.package.deleted" => {
                fields(&["reason", "bytes_freed"], &[])?;
                EventData::PackageDeleted {
                    reason: r.text("reason")?,
                    bytes_freed: r.uint("bytes_freed")?,
                }
            }
            "v1.blob.deleted" => {
                fields(&["sha256", "blake3", "size"], &[])?;
                EventData::BlobDeleted { blob: blob()? }
            }
            "v1.package.tier_changed" => {
                fields(&["tier", "moved"], &[])?;
                let items = r
                    .get("moved")?
                    .as_array()
                    .ok_or(EventError::WrongType("moved"))?;
                let moved = items
                    .iter()
                    .map(|item| {
                        let m = item.as_map().ok_or(EventError::WrongType("moved"))?;
                        check_fields::<EventError>(
                            m,
                            &["sha256", "blake3", "size", "location"],
                            &[],
                        )?;
                        let r = Reader(m);
                        Ok(MovedBlob {
                            blob: BlobId {
                                sha256: r.hash("sha256")?,
                                blake3: r.hash("blake3")?,
                                size: r.uint("size")?,
                            },
                            location: r.text("location")?,
                        })
                    })
                    .collect::<Result<Vec<_>, EventError>>()?;
                EventData::PackageTierChanged {
                    tier: r.text("tier")?,
                    moved,
                }
            }
            other => return Err(EventError::UnknownType(other.to_owned())),
        })
    }
}

/// An event before it has a place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDraft {
    /// A UUID v7 in hyphenated lowercase form.
    pub id: String,
    pub subject: String,
    pub actor: String,
    pub at: Timestamp,
    pub data: EventData,
}

impl EventDraft {
    /// Gives the draft its place after `prev`: the only way to build an
    /// [`Event`], so every event's hash matches its bytes.
    pub fn seal(self, seq: u64, prev: Hash) -> Event {
        let envelope = Envelope {
            seq,
            draft: self,
            prev,
        };
        let bytes = envelope.to_value().to_canonical_bytes();
        let hash = *blake3::hash(&bytes).as_bytes();
        Event {
            envelope,
            bytes,
            hash,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Envelope {
    seq: u64,
    draft: EventDraft,
    prev: Hash,
}

impl Envelope {
    fn to_value(&self) -> Value {
        let d = &self.draft;
        Value::Map(
            Map::new()
                .with("seq", Value::Unsigned(self.seq))
                .with("id", Value::text(&d.id))
                .with("type", Value::text(d.data.type_name()))
                .with("subject", Value::text(&d.subject))
                .with("actor", Value::text(&d.actor))
                .with("at", Value::text(d.at.to_string()))
                .with("data", Value::Map(d.data.to_value()))
                .with("prev", Value::Bytes(self.prev.to_vec())),
        )
    }
}

/// A sealed event: the envelope, its canonical bytes and their hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    envelope: Envelope,
    bytes: Vec<u8>,
    hash: Hash,
}

impl Event {
    pub fn seq(&self) -> u64 {
        self.envelope.seq
    }
    pub fn id(&self) -> &str {
        &self.envelope.draft.id
    }
    pub fn type_name(&self) -> &'static str {
        self.envelope.draft.data.type_name()
    }
    pub fn subject(&self) -> &str {
        &self.envelope.draft.subject
    }
    pub fn actor(&self) -> &str {
        &self.envelope.draft.actor
    }
    pub fn at(&self) -> Timestamp {
        self.envelope.draft.at
    }
    pub fn data(&self) -> &EventData {
        &self.envelope.draft.data
    }
    pub fn prev(&self) -> &Hash {
        &self.envelope.prev
    }
    pub fn hash(&self) -> &Hash {
        &self.hash
    }
    /// The canonical CBOR bytes the hash covers.
    pub fn canonical_bytes(&self) -> &[u8] {
        &self.bytes
    }
    pub fn to_value(&self) -> Value {
        self.envelope.to_value()
    }

    /// Decodes stored bytes strictly: canonical CBOR, known type, exact
    /// fields. The hash is recomputed from the bytes, never trusted.
    pub fn decode(bytes: &[u8]) -> Result<Event, EventError> {
        let value = cbor::decode(bytes)?;
        let m = value.as_map().ok_or(EventError::WrongType("envelope"))?;
        check_fields::<EventError>(
            m,
            &[
                "seq", "id", "type", "subject", "actor", "at", "data", "prev",
            ],
            &[],
        )?;
        let r = Reader(m);
        let seq = r.uint("seq")?;
        let id = r.text("id")?;
        if !is_uuid_text(&id) {
            return Err(EventError::WrongType("id"));
        }
        let type_name = r.text("type")?;
        let data_map = m
            .get("data")
            .and_then(Value::as_map)
            .ok_or(EventError::WrongType("data"))?;
        let envelope = Envelope {
            seq,
            prev: r.hash("prev")?,
            draft: EventDraft {
                id,
                subject: r.text("subject")?,
                actor: r.text("actor")?,
                at: r.timestamp("at")?,
                data: EventData::from_value(&type_name, data_map)?,
            },
        };
        Ok(Event {
            envelope,
            bytes: bytes.to_vec(),
            hash: *blake3::hash(bytes).as_bytes(),
        })
    }
}

fn is_uuid_text(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => matches!(b, b'0'..=b'9' | b'a'..=b'f'),
        })
}

/// Why stored event bytes are not a valid v1 event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Cbor(#[from] cbor::DecodeError),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("missing field {0:?}")]
    MissingField(&'static str),
    #[error("unknown field {0:?}")]
    UnknownField(String),
    #[error("field {0:?} has the wrong type or range")]
    WrongType(&'static str),
}

impl From<FieldError> for EventError {
    fn from(e: FieldError) -> Self {
        match e {
            FieldError::MissingField(k) => EventError::MissingField(k),
            FieldError::UnknownField(k) => EventError::UnknownField(k),
        }
    }
}

struct Reader<'a>(&'a Map);

impl Reader<'_> {
    fn get(&self, key: &'static str) -> Result<&Value, EventError> {
        self.0.get(key).ok_or(EventError::MissingField(key))
    }
    fn text(&self, key: &'static str) -> Result<String, EventError> {
        self.get(key)?
            .as_text()
            .map(str::to_owned)
            .ok_or(EventError::WrongType(key))
    }
    fn uint(&self, key: &'static str) -> Result<u64, EventError> {
        self.get(key)?
            .as_u64()
            .filter(|n| *n <= MAX_SAFE_INTEGER)
            .ok_or(EventError::WrongType(key))
    }
    fn hash(&self, key: &'static str) -> Result<Hash, EventError> {
        self.get(key)?
            .as_bytes()
            .and_then(|b| b.try_into().ok())
            .ok_or(EventError::WrongType(key))
    }
    fn timestamp(&self, key: &'static str) -> Result<Timestamp, EventError> {
        self.get(key)?
            .as_text()
            .and_then(|t| t.parse().ok())
            .ok_or(EventError::WrongType(key))
    }
}

/// Where and how the chain broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("event at seq {seq} cannot be decoded: {source}")]
    Malformed { seq: u64, source: EventError },
    #[error("expected seq {expected}, found seq {found}")]
    Gap { expected: u64, found: u64 },
    #[error("event {seq}: stored hash does not match its bytes")]
    HashMismatch { seq: u64 },
    #[error(
        "the link from event {} to event {seq} is broken: event {} was altered (with its stored hash rewritten) or event {seq}'s prev was",
        seq - 1, seq - 1
    )]
    PrevMismatch { seq: u64 },
    #[error("log ends at seq {found} but its recorded head is seq {expected}")]
    HeadMismatch { expected: u64, found: u64 },
}

impl ChainError {
    /// The first seq at which the log may not be what it claims to be. A
    /// broken `prev` link at n can mean n − 1 was altered (its stored hash
    /// rewritten to match) as well as n, so it names n − 1.
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::Malformed { seq, .. } | ChainError::HashMismatch { seq } => *seq,
            ChainError::PrevMismatch { seq } => seq - 1,
            ChainError::Gap { expected, found } => (*expected).min(*found),
            ChainError::HeadMismatch { expected, found } => (*expected).min(*found) + 1,
        }
    }
}

/// Walks a log in seq order and checks every link.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_seq: u64,
    prev: Hash,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            next_seq: 1,
            prev: GENESIS_PREV,
        }
    }
}

impl ChainVerifier {
    pub fn new() -> ChainVerifier {
        ChainVerifier::default()
    }

    /// A verifier that continues a log known up to event `seq` with hash
    /// `hash` (0 and [`GENESIS_PREV`] for an empty one).
    pub fn after(seq: u64, hash: Hash) -> ChainVerifier {
        ChainVerifier {
            next_seq: seq + 1,
            prev: hash,
        }
    }

    /// Checks the next stored event: its row's `seq`, its bytes and the hash
    /// stored beside them.
    pub fn check(
        &mut self,
        row_seq: u64,
        bytes: &[u8],
        stored_hash: &Hash,
    ) -> Result<Event, ChainError> {
        if row_seq != self.next_seq {
            return Err(ChainError::Gap {
                expected: self.next_seq,
                found: row_seq,
            });
        }
        let event = Event::decode(bytes).map_err(|source| ChainError::Malformed {
            seq: row_seq,
            source,
        })?;
        // The hash first: any edit that kept its stored hash is pinned to
        // this exact row. What passes it is self-consistent, and the seq and
        // prev checks below catch it where it no longer fits its neighbours.
        if event.hash() != stored_hash {
            return Err(ChainError::HashMismatch { seq: row_seq });
        }
        if event.seq() != row_seq {
            return Err(ChainError::Gap {
                expected: self.next_seq,
                found: event.seq(),
            });
        }
        if event.prev() != &self.prev {
            return Err(ChainError::PrevMismatch { seq: row_seq });
        }
        self.next_seq += 1;
        self.prev = *event.hash();
        Ok(event)
    }

    /// Checks that the log ended where its separately recorded head says, so
    /// truncating the tail (or editing the last event) is caught too.
    pub fn finish(&self, head_seq: u64, head_hash: &Hash) -> Result<(), ChainError> {
        let last = self.next_seq - 1;
        if last != head_seq {
            return Err(ChainError::HeadMismatch {
                expected: head_seq,
                found: last,
            });
        }
        if &self.prev != head_hash {
            return Err(ChainError::HashMismatch { seq: last });
        }
        Ok(())
    }

    /// The seq and hash of the last event checked.
    pub fn head(&self) -> (u64, Hash) {
        (self.next_seq - 1, self.prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn all_types() -> Vec<EventData> {
        let blob = BlobId::of(b"hello");
        let t = ts("2026-11-28T11:15:20.123456Z");
        vec![
            EventData::BlobStored {
                blob,
                location: "blobs/blake3/ab/cd/x".into(),
            },
            EventData::PackageCreated {
                name: "guide-board/runs".into(),
                manifest_sha256: [1; 32],
                manifest_blake3: [2; 32],
                file_count: 4,
                total_size: 5321,
                retention_class: "release-evidence".into(),
            },
            EventData::RetentionDefaultApplied {
                class: "scratch".into(),
                expires_at: Some(t),
            },
            EventData::RetentionDefaultApplied {
                class: "permanent-record".into(),
                expires_at: None,
            },
            EventData::RetentionExtended {
                previous_expires_at: t,
                new_expires_at: ts("2027-01-01T00:00:00.000000Z"),
                reason: "audit".into(),
            },
            EventData::RetentionHoldApplied {
                hold_id: "h1".into(),
                reason: "litigation".into(),
            },
            EventData::RetentionHoldReleased {
                hold_id: "h1".into(),
                reason: "settled".into(),
            },
            EventData::RetentionDeletionEligible {
                expires_at: t,
                evaluated_at: t,
            },
            EventData::PackageDeleted {
                reason: "gc".into(),
                bytes_freed: 10,
            },
            EventData::BlobDeleted { blob },
            EventData::PackageTierChanged {
                tier: "cold".into(),
                moved: vec![MovedBlob {
                    blob,
                    location: "blobs/01936f2e-0000-7000-8000-000000000001".into(),
                }],
            },
            EventData::PackageTierChanged {
                tier: "cold".into(),
                moved: vec![],
            },
        ]
    }

    fn draft(n: u64, data: EventData) -> EventDraft {
        EventDraft {
            id: format!("01936f2e-0000-7000-8000-{n:012x}"),
            subject: "sha256:00".into(),
            actor: "anonymous".into(),
            at: Timestamp::from_unix_micros(n as i64).unwrap(),
            data,
        }
    }

    /// A log of `n` events as stored rows: (seq, bytes, hash).
    fn chain(n: u64) -> Vec<(u64, Vec<u8>, Hash)> {
        let types = all_types();
        let mut prev = GENESIS_PREV;
        (1..=n)
            .map(|seq| {
                let e = draft(seq, types[seq as usize % types.len()].clone()).seal(seq, prev);
                prev = *e.hash();
                (seq, e.canonical_bytes().to_vec(), *e.hash())
            })
            .collect()
    }

    fn verify(rows: &[(u64, Vec<u8>, Hash)], head: (u64, Hash)) -> Result<(), ChainError> {
        let mut v = ChainVerifier::new();
        for (seq, bytes, hash) in rows {
            v.check(*seq, bytes, hash)?;
        }
        v.finish(head.0, &head.1)
    }

    fn head_of(rows: &[(u64, Vec<u8>, Hash)]) -> (u64, Hash) {
        let last = rows.last().unwrap();
        (last.0, last.2)
    }

    #[test]
    fn every_type_round_trips_and_reencodes_identically() {
        for (i, data) in all_types().into_iter().enumerate() {
            let e = draft(i as u64, data).seal(i as u64 + 1, [7; 32]);
            let decoded = Event::decode(e.canonical_bytes()).unwrap();
            assert_eq!(decoded, e);
            assert_eq!(decoded.to_value().to_canonical_bytes(), e.canonical_bytes());
        }
    }

    #[test]
    fn hash_is_blake3_of_canonical_bytes_and_stable() {
        let e = draft(
            1,
            EventData::PackageDeleted {
                reason: "gc".into(),
                bytes_freed: 0,
            },
        )
        .seal(1, GENESIS_PREV);
        assert_eq!(e.hash(), blake3::hash(e.canonical_bytes()).as_bytes());
        // Hand-checked prefix: a map of 8 entries whose first key is "at"
        // (shortest key), then "id", then "seq".
        assert!(hex::encode(e.canonical_bytes()).starts_with("a8626174781b"));
    }

    #[test]
    fn decoding_is_strict() {
        let e = draft(
            1,
            EventData::PackageDeleted {
                reason: "gc".into(),
                bytes_freed: 0,
            },
        )
        .seal(1, GENESIS_PREV);
        let Value::Map(m) = e.to_value() else {
            unreachable!()
        };
        let with = |k: &str, v: Value| {
            let mut entries: Vec<_> = m
                .iter()
                .filter(|(key, _)| key.as_text() != Some(k))
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect();
            entries.push((Value::text(k), v));
            Event::decode(&Value::Map(Map::from_entries(entries).unwrap()).to_canonical_bytes())
        };
        assert_eq!(
            with("type", Value::text("v9.nope")).unwrap_err(),
            EventError::UnknownType("v9.nope".into())
        );
        assert_eq!(
            with("extra", Value::Null).unwrap_err(),
            EventError::UnknownField("extra".into())
        );
        assert_eq!(
            with("at", Value::text("2026-11-28T11:15:20Z")).unwrap_err(),
            EventError::WrongType("at")
        );
        assert_eq!(
            with("prev", Value::Bytes(vec![0; 31])).unwrap_err(),
            EventError::WrongType("prev")
        );
        assert_eq!(
            with("seq", Value::Unsigned(MAX_SAFE_INTEGER + 1)).unwrap_err(),
            EventError::WrongType("seq")
        );
        assert_eq!(
            with("id", Value::text("not-a-uuid")).unwrap_err(),
            EventError::WrongType("id")
        );
    }

    #[test]
    fn intact_chain_verifies() {
        let rows = chain(12);
        assert_eq!(verify(&rows, head_of(&rows)), Ok(()));
    }

    #[test]
    fn detects_an_edited_event() {
        let mut rows = chain(6);
        let head = head_of(&rows);
        // Edit event 3 and keep its stored hash: the hash no longer matches.
        let edited = draft(
            3,
            EventData::PackageDeleted {
                reason: "forged".into(),
                bytes_freed: 1,
            },
        )
        .seal(3, rows[1].2);
        rows[2].1 = edited.canonical_bytes().to_vec();
        assert_eq!(
            verify(&rows, head).unwrap_err(),
            ChainError::HashMismatch { seq: 3 }
        );
        // Also rewrite the stored hash: event 4's prev gives it away, and
        // the first event that may be bad is 3.
        rows[2].2 = *edited.hash();
        let err = verify(&rows, head).unwrap_err();
        assert_eq!(err, ChainError::PrevMismatch { seq: 4 });
        assert_eq!(err.seq(), 3);
    }

    #[test]
    fn detects_an_edited_last_event_through_the_head() {
        let mut rows = chain(4);
        let head = head_of(&rows);
        let edited = draft(
            4,
            EventData::PackageDeleted {
                reason: "forged".into(),
                bytes_freed: 1,
            },
        )
        .seal(4, rows[2].2);
        rows[3] = (4, edited.canonical_bytes().to_vec(), *edited.hash());
        assert_eq!(
            verify(&rows, head).unwrap_err(),
            ChainError::HashMismatch { seq: 4 }
        );
    }

    #[test]
    fn detects_a_removed_event() {
        let mut rows = chain(6);
        let head = head_of(&rows);
        rows.remove(2);
        assert_eq!(
            verify(&rows, head).unwrap_err(),
            ChainError::Gap {
                expected: 3,
                found: 4
            }
        );
        // Removing the tail is caught by the recorded head.
        let mut rows = chain(6);
        rows.pop();
        assert_eq!(
            verify(&rows, head).unwrap_err(),
            ChainError::HeadMismatch {
                expected: 6,
                found: 5
            }
        );
    }

    #[test]
    fn detects_an_inserted_event() {
        let mut rows = chain(6);
        let head = head_of(&rows);
        // A forged event spliced in after 2 and everything renumbered.
        let forged = draft(
            99,
            EventData::PackageDeleted {
                reason: "x".into(),
                bytes_freed: 0,
            },
        )
        .seal(3, rows[1].2);
        rows.insert(2, (3, forged.canonical_bytes().to_vec(), *forged.hash()));
        for (i, row) in rows.iter_mut().enumerate().skip(3) {
            row.0 = i as u64 + 1;
        }
        // The original event 3, now at row 4, still says seq 3.
        assert_eq!(
            verify(&rows, head).unwrap_err(),
            ChainError::Gap {
                expected: 4,
                found: 3
            }
        );
    }

    #[test]
    fn detects_reordered_events() {
        let mut rows = chain(6);
        let head = head_of(&rows);
        rows.swap(2, 3);
        assert_eq!(
            verify(&rows, head).unwrap_err(),
            ChainError::Gap {
                expected: 3,
                found: 4
            }
        );
        // Swapping the bytes but keeping row seqs: the envelope's seq differs.
        let mut rows = chain(6);
        let (b3, h3) = (rows[2].1.clone(), rows[2].2);
        rows[2].1 = rows[3].1.clone();
        rows[2].2 = rows[3].2;
        rows[3].1 = b3;
        rows[3].2 = h3;
        assert_eq!(
            verify(&rows, head).unwrap_err(),
            ChainError::Gap {
                expected: 3,
                found: 4
            }
        );
    }

    proptest! {
        #[test]
        fn any_single_byte_flip_is_detected(n in 1u64..10, pick in any::<prop::sample::Index>(), byte in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut rows = chain(n);
            let head = head_of(&rows);
            let row = pick.index(rows.len());
            let i = byte.index(rows[row].1.len());
            rows[row].1[i] ^= 1 << bit;
            let err = verify(&rows, head).unwrap_err();
            prop_assert_eq!(err.seq(), row as u64 + 1);
        }
    }
}
