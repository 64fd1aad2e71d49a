//! Inputs: incompressible bytes, made fast and reproducibly (the BLAKE3
//! output stream of a seed), and the digests both sides need.

use std::io::Write as _;
use std::path::Path;

use sha2::Digest as _;

/// `len` pseudo-random bytes from `seed`.
pub(crate) fn bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new_derive_key("artifactstore bench")
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Writes `len` pseudo-random bytes from `seed` to `path` (not synced: an
/// input, not a measurement) and returns their SHA-256 in hex.
pub(crate) fn file(path: &Path, seed: &str, len: u64) -> anyhow::Result<String> {
    let mut xof = blake3::Hasher::new_derive_key("artifactstore bench")
        .update(seed.as_bytes())
        .finalize_xof();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        sha.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(hex::encode(sha.finalize()))
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}
