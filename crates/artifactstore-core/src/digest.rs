//! Content digests in the OCI text form `<algorithm>:<64 lowercase hex>`.
//!
//! Every blob carries both a SHA-256 and a BLAKE3 digest; either one
//! addresses it. Uppercase hex is rejected rather than normalised so that one
//! digest has exactly one text form (the same rule the OCI grammar applies to
//! registered algorithms).

use std::fmt;
use std::str::FromStr;

/// The two digest algorithms every blob is addressed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Blake3,
}

impl Algorithm {
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Blake3];

    /// The algorithm's name as it appears before the `:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest has no ':' separating algorithm and hex")]
    MissingSeparator,
    #[error("unsupported digest algorithm {0:?} (expected sha256 or blake3)")]
    UnsupportedAlgorithm(String),
    #[error("digest hex must be 64 characters, got {0}")]
    WrongLength(usize),
    #[error("digest hex must be lowercase 0-9a-f")]
    InvalidHex,
}

/// A 32-byte digest together with its algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    bytes: [u8; 32],
}

impl Digest {
    pub const fn new(algorithm: Algorithm, bytes: [u8; 32]) -> Self {
        Digest { algorithm, bytes }
    }
    pub const fn sha256(bytes: [u8; 32]) -> Self {
        Digest::new(Algorithm::Sha256, bytes)
    }
    pub const fn blake3(bytes: [u8; 32]) -> Self {
        Digest::new(Algorithm::Blake3, bytes)
    }
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
    /// The 64-character lowercase hex of the digest bytes.
    pub fn hex(&self) -> String {
        hex::encode(self.bytes)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algo, hex_part) = s.split_once(':').ok_or(DigestError::MissingSeparator)?;
        let algorithm = match algo {
            "sha256" => Algorithm::Sha256,
            "blake3" => Algorithm::Blake3,
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        Ok(Digest::new(algorithm, parse_hex32(hex_part)?))
    }
}

/// Parses exactly 64 lowercase hex characters.
pub fn parse_hex32(s: &str) -> Result<[u8; 32], DigestError> {
    if s.len() != 64 {
        return Err(DigestError::WrongLength(s.len()));
    }
    if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(DigestError::InvalidHex);
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| DigestError::InvalidHex)?;
    Ok(out)
}

/// The identity of a stored blob: both digests and the size, computed in one
/// pass over its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobId {
    pub sha256: [u8; 32],
    pub blake3: [u8; 32],
    pub size: u64,
}

impl BlobId {
    pub fn sha256_digest(&self) -> Digest {
        Digest::sha256(self.sha256)
    }
    pub fn blake3_digest(&self) -> Digest {
        Digest::blake3(self.blake3)
    }
    /// The digest of this blob under `algorithm`.
    pub fn digest(&self, algorithm: Algorithm) -> Digest {
        match algorithm {
            Algorithm::Sha256 => self.sha256_digest(),
            Algorithm::Blake3 => self.blake3_digest(),
        }
    }
    /// Whether `d` names this blob.
    pub fn matches(&self, d: &Digest) -> bool {
        self.digest(d.algorithm()) == *d
    }
    /// Computes both digests of an in-memory byte string. The engine's
    /// streaming ingest computes the same values on separate threads.
    pub fn of(bytes: &[u8]) -> BlobId {
        let mut h = BlobHasher::new();
        h.update(bytes);
        h.finish()
    }
}

/// Both digests and the size of bytes fed in pieces, on the calling thread
/// (the client's hashing; the server's ingest spreads the same work over
/// two threads).
#[derive(Clone, Default)]
pub struct BlobHasher {
    sha256: sha2::Sha256,
    blake3: blake3::Hasher,
    size: u64,
}

impl fmt::Debug for BlobHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobHasher")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl BlobHasher {
    pub fn new() -> BlobHasher {
        BlobHasher::default()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        self.sha256.update(bytes);
        self.blake3.update(bytes);
        self.size += bytes.len() as u64;
    }
    pub fn finish(self) -> BlobId {
        use sha2::Digest as _;
        BlobId {
            sha256: self.sha256.finalize().into(),
            blake3: *self.blake3.finalize().as_bytes(),
            size: self.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_BLAKE3: &str =
        "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn known_digests_of_the_empty_string() {
        let id = BlobId::of(b"");
        assert_eq!(id.sha256_digest().to_string(), EMPTY_SHA256);
        assert_eq!(id.blake3_digest().to_string(), EMPTY_BLAKE3);
        assert!(id.matches(&EMPTY_SHA256.parse().unwrap()));
        assert!(id.matches(&EMPTY_BLAKE3.parse().unwrap()));
        assert!(!id.matches(&Digest::sha256([0; 32])));
    }

    #[test]
    fn rejects_malformed_digests() {
        let cases: &[(&str, DigestError)] = &[
            ("", DigestError::MissingSeparator),
            ("e3b0c442", DigestError::MissingSeparator),
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e",
                DigestError::UnsupportedAlgorithm("md5".into()),
            ),
            (
                "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                DigestError::UnsupportedAlgorithm("SHA256".into()),
            ),
            ("sha256:abc", DigestError::WrongLength(3)),
            (
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                DigestError::InvalidHex,
            ),
            (
                "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                DigestError::InvalidHex,
            ),
            (
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85\u{e9}",
                DigestError::WrongLength(65),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Digest>().unwrap_err(), *want, "{input:?}");
        }
    }

    proptest! {
        #[test]
        fn hashing_in_pieces_equals_hashing_at_once(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            cut in any::<prop::sample::Index>(),
        ) {
            let (a, b) = data.split_at(cut.index(data.len() + 1));
            let mut h = BlobHasher::new();
            h.update(a);
            h.update(b);
            use sha2::Digest as _;
            prop_assert_eq!(h.finish(), BlobId {
                sha256: sha2::Sha256::digest(&data).into(),
                blake3: *blake3::hash(&data).as_bytes(),
                size: data.len() as u64,
            });
        }

        #[test]
        fn display_then_parse_round_trips(bytes in any::<[u8; 32]>(), blake in any::<bool>()) {
            let algorithm = if blake { Algorithm::Blake3 } else { Algorithm::Sha256 };
            let d = Digest::new(algorithm, bytes);
            let text = d.to_string();
            prop_assert_eq!(text.len(), algorithm.as_str().len() + 1 + 64);
            prop_assert_eq!(text.parse::<Digest>().unwrap(), d);
        }

        #[test]
        fn parse_never_panics_and_accepts_only_canonical_text(s in "\\PC{0,80}") {
            if let Ok(d) = s.parse::<Digest>() {
                prop_assert_eq!(d.to_string(), s);
            }
        }
    }
}
