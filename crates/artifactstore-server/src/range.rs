//! The `Range` request header (RFC 9110 §14), for a single byte range.
//!
//! Multiple ranges would need a multipart response; like most blob servers
//! we answer them with the whole representation, which the RFC allows.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: send the whole blob with 200.
    Full,
    /// Send these bytes with 206.
    Partial(Range<u64>),
    /// The range lies outside the blob: 416.
    Unsatisfiable,
}

/// Resolves a `Range` header value against a blob of `size` bytes.
pub fn resolve(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        // bytes=-N: the last N bytes.
        ("", n) => match num(n) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial(size.saturating_sub(n)..size),
            None => RangeRequest::Full,
        },
        (a, b) => {
            let Some(start) = num(a) else {
                return RangeRequest::Full;
            };
            let end_inclusive = match b {
                "" => u64::MAX,
                b => match num(b) {
                    Some(e) if e >= start => e,
                    _ => return RangeRequest::Full,
                },
            };
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(start..end_inclusive.saturating_add(1).min(size))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::*;
    use super::*;

    #[test]
    fn single_ranges() {
        let cases: &[(Option<&str>, u64, RangeRequest)] = &[
            (None, 100, Full),
            (Some("bytes=0-0"), 100, Partial(0..1)),
            (Some("bytes=10-19"), 100, Partial(10..20)),
            (Some("bytes=90-"), 100, Partial(90..100)),
            (Some("bytes=90-1000"), 100, Partial(90..100)),
            (Some("bytes=-10"), 100, Partial(90..100)),
            (Some("bytes=-1000"), 100, Partial(0..100)),
            (Some("bytes=100-"), 100, Unsatisfiable),
            (Some("bytes=100-200"), 100, Unsatisfiable),
            (Some("bytes=-0"), 100, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=-5"), 0, Unsatisfiable),
            (Some("bytes=20-10"), 100, Full),
            (Some("bytes=0-1,5-6"), 100, Full),
            (Some("items=0-1"), 100, Full),
            (Some("bytes=a-b"), 100, Full),
            (Some("bytes=+1-2"), 100, Full),
            (Some("bytes=18446744073709551615-"), 100, Unsatisfiable),
            (Some("bytes=0-18446744073709551615"), 100, Partial(0..100)),
        ];
        for (h, size, want) in cases {
            assert_eq!(&resolve(*h, *size), want, "{h:?} of {size}");
        }
    }
}
