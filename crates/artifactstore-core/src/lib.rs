//! Pure kernels of artifactstore: the rules every other crate relies on,
//! with no I/O and no async, so each can be tested exhaustively.
//!
//! - [`digest`]: `sha256:`/`blake3:` digests and the dual-digest [`BlobId`].
//! - [`cbor`]: the canonical CBOR codec (RFC 8949 §4.2.1), strict decoder.
//! - [`jcs`]: the RFC 8785 JSON projection of the same values.
//! - [`manifest`]: manifest v1 and its validation.
//! - [`event`]: the event envelope, the v1 types and the hash chain.
//! - [`retention`]: retention classes and expiry arithmetic.
//! - [`time`]: the one timestamp text form.

pub mod cbor;
pub mod digest;
pub mod event;
pub mod jcs;
pub mod manifest;
pub mod retention;
pub mod time;

pub use digest::{Algorithm, BlobHasher, BlobId, Digest, DigestError};
pub use time::Timestamp;
