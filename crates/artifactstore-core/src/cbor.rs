//! Canonical CBOR: RFC 8949 §4.2.1 core deterministic encoding.
//!
//! The encoder emits shortest-form heads, definite lengths only, and map keys
//! sorted by the bytewise order of their encodings. The decoder accepts only
//! that form: any other encoding of a value is an error, so every value has
//! exactly one byte string and therefore one digest. Floats, tags, `undefined`
//! and other simple values are outside the data model and rejected.
//!
//! Why not a crate: the CBOR crates we checked either do not sort map keys by
//! encoded bytes (for text keys that is shorter-first, not `String` order) or
//! do not reject non-canonical input, and both properties carry the identity
//! of every manifest and event.

use std::cmp::Ordering;
use std::fmt;

/// Nesting deeper than this is refused by the decoder, so hostile input
/// cannot exhaust the stack. Manifests and events nest four levels.
pub const MAX_DEPTH: usize = 64;

/// A CBOR data item within the subset artifactstore uses.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Unsigned(u64),
    /// The negative integer `-1 - n`, as CBOR major type 1 carries it.
    Negative(u64),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Value>),
    Map(Map),
    Bool(bool),
    Null,
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Unsigned(n) => write!(f, "{n}"),
            Value::Negative(n) => write!(f, "-{}", u128::from(*n) + 1),
            Value::Bytes(b) => write!(f, "h'{}'", hex::encode(b)),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Array(items) => f.debug_list().entries(items).finish(),
            Value::Map(m) => f
                .debug_map()
                .entries(m.entries.iter().map(|(k, v)| (k, v)))
                .finish(),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Null => f.write_str("null"),
        }
    }
}

impl Value {
    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }
    /// An integer in the range artifactstore allows everywhere (JCS-exact).
    pub fn int(n: i64) -> Value {
        if n >= 0 {
            Value::Unsigned(n as u64)
        } else {
            Value::Negative((-(n + 1)) as u64)
        }
    }
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Unsigned(n) => Some(*n),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }
    /// The canonical encoding of this value.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(self, &mut out);
        out
    }
}

/// A map whose entries are kept in canonical order (bytewise order of the
/// encoded keys) with no duplicate keys, so encoding never has to sort or
/// fail.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Map {
    entries: Vec<(Value, Value)>,
}

impl fmt::Debug for Map {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Value::Map(self.clone()), f)
    }
}

/// A map was given the same key twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("duplicate map key {0:?}")]
pub struct DuplicateKey(pub Value);

impl Map {
    pub fn new() -> Map {
        Map::default()
    }

    /// Builds a map from entries in any order.
    pub fn from_entries(entries: Vec<(Value, Value)>) -> Result<Map, DuplicateKey> {
        let mut keyed: Vec<(Vec<u8>, Value, Value)> = entries
            .into_iter()
            .map(|(k, v)| (k.to_canonical_bytes(), k, v))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = keyed.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(DuplicateKey(w[0].1.clone()));
        }
        Ok(Map {
            entries: keyed.into_iter().map(|(_, k, v)| (k, v)).collect(),
        })
    }

    /// Inserts an entry at its canonical position.
    pub fn insert(&mut self, key: Value, value: Value) -> Result<(), DuplicateKey> {
        let encoded = key.to_canonical_bytes();
        match self
            .entries
            .binary_search_by(|(k, _)| k.to_canonical_bytes().cmp(&encoded))
        {
            Ok(_) => Err(DuplicateKey(key)),
            Err(pos) => {
                self.entries.insert(pos, (key, value));
                Ok(())
            }
        }
    }

    /// Inserts a text-keyed entry; for building records whose keys are
    /// literals, where a duplicate is a programming error.
    pub fn with(mut self, key: &str, value: Value) -> Map {
        let inserted = self.insert(Value::text(key), value);
        debug_assert!(inserted.is_ok(), "duplicate literal key {key}");
        self
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_text() == Some(key))
            .map(|(_, v)| v)
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&Value, &Value)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

/// Encodes `value` canonically onto `out`.
pub fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Unsigned(n) => head(0, *n, out),
        Value::Negative(n) => head(1, *n, out),
        Value::Bytes(b) => {
            head(2, b.len() as u64, out);
            out.extend_from_slice(b);
        }
        Value::Text(s) => {
            head(3, s.len() as u64, out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            head(4, items.len() as u64, out);
            for item in items {
                encode_into(item, out);
            }
        }
        Value::Map(m) => {
            head(5, m.entries.len() as u64, out);
            for (k, v) in &m.entries {
                encode_into(k, out);
                encode_into(v, out);
            }
        }
        Value::Bool(false) => out.push(0xf4),
        Value::Bool(true) => out.push(0xf5),
        Value::Null => out.push(0xf6),
    }
}

fn head(major: u8, n: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= 0xff {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= 0xffff {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= 0xffff_ffff {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// What made an input non-canonical or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("unexpected end of input")]
    Truncated,
    #[error("integer or length not in shortest form")]
    NonShortest,
    #[error("indefinite-length item")]
    Indefinite,
    #[error("reserved additional information value")]
    Reserved,
    #[error("floating-point value")]
    Float,
    #[error("tagged value (tags are not used by artifactstore)")]
    Tag,
    #[error("unsupported simple value")]
    UnsupportedSimple,
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("map keys not in canonical order")]
    UnsortedKeys,
    #[error("duplicate map key")]
    DuplicateKey,
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("trailing bytes after the value")]
    TrailingBytes,
}

/// A decoding failure and the byte offset where it was detected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("non-canonical or malformed CBOR at byte {offset}: {kind}")]
pub struct DecodeError {
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

/// Decodes exactly one canonical value occupying all of `input`.
pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
    let mut d = Decoder { input, pos: 0 };
    let v = d.value(0)?;
    if d.pos != input.len() {
        return Err(d.err(DecodeErrorKind::TrailingBytes));
    }
    Ok(v)
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn err(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            offset: self.pos,
            kind,
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let remaining = self.input.len() - self.pos;
        if n > remaining as u64 {
            return Err(self.err(DecodeErrorKind::Truncated));
        }
        let slice = &self.input[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }

    /// Reads an item head: (major type, additional info, argument).
    fn head(&mut self) -> Result<(u8, u8, u64), DecodeError> {
        let start = self.pos;
        let initial = self.take(1)?[0];
        let (major, ai) = (initial >> 5, initial & 0x1f);
        let arg = match ai {
            0..=23 => u64::from(ai),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(self.fixed()?)),
            26 => u64::from(u32::from_be_bytes(self.fixed()?)),
            27 => u64::from_be_bytes(self.fixed()?),
            28..=30 => return Err(self.err_at(start, DecodeErrorKind::Reserved)),
            _ => {
                let kind = if major == 7 {
                    DecodeErrorKind::UnsupportedSimple
                } else {
                    DecodeErrorKind::Indefinite
                };
                return Err(self.err_at(start, kind));
            }
        };
        // Major type 7 reuses 25..27 for floats; their width is not a length.
        if major != 7 {
            let shortest = match ai {
                24 => arg >= 24,
                25 => arg > 0xff,
                26 => arg > 0xffff,
                27 => arg > 0xffff_ffff,
                _ => true,
            };
            if !shortest {
                return Err(self.err_at(start, DecodeErrorKind::NonShortest));
            }
        }
        Ok((major, ai, arg))
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn err_at(&self, offset: usize, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { offset, kind }
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.err(DecodeErrorKind::TooDeep));
        }
        let start = self.pos;
        let (major, ai, arg) = self.head()?;
        Ok(match major {
            0 => Value::Unsigned(arg),
            1 => Value::Negative(arg),
            2 => Value::Bytes(self.take(arg)?.to_vec()),
            3 => {
                let bytes = self.take(arg)?;
                let s = std::str::from_utf8(bytes)
                    .map_err(|_| self.err_at(start, DecodeErrorKind::InvalidUtf8))?;
                Value::Text(s.to_owned())
            }
            4 => {
                // Every item takes at least one byte: a length beyond the
                // remaining input is truncation, found before allocating.
                self.check_count(arg, 1)?;
                let mut items = Vec::with_capacity(arg as usize);
                for _ in 0..arg {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            5 => {
                self.check_count(arg, 2)?;
                let mut entries = Vec::with_capacity(arg as usize);
                let mut prev_key: Option<&'a [u8]> = None;
                for _ in 0..arg {
                    let key_start = self.pos;
                    let key = self.value(depth + 1)?;
                    let key_bytes = &self.input[key_start..self.pos];
                    if let Some(prev) = prev_key {
                        match prev.cmp(key_bytes) {
                            Ordering::Less => {}
                            Ordering::Equal => {
                                return Err(self.err_at(key_start, DecodeErrorKind::DuplicateKey));
                            }
                            Ordering::Greater => {
                                return Err(self.err_at(key_start, DecodeErrorKind::UnsortedKeys));
                            }
                        }
                    }
                    prev_key = Some(key_bytes);
                    let value = self.value(depth + 1)?;
                    entries.push((key, value));
                }
                Value::Map(Map { entries })
            }
            6 => return Err(self.err_at(start, DecodeErrorKind::Tag)),
            _ => match ai {
                20 => Value::Bool(false),
                21 => Value::Bool(true),
                22 => Value::Null,
                25..=27 => return Err(self.err_at(start, DecodeErrorKind::Float)),
                _ => return Err(self.err_at(start, DecodeErrorKind::UnsupportedSimple)),
            },
        })
    }

    fn check_count(&self, count: u64, min_bytes_each: u64) -> Result<(), DecodeError> {
        let remaining = (self.input.len() - self.pos) as u64;
        if count.saturating_mul(min_bytes_each) > remaining {
            return Err(self.err(DecodeErrorKind::Truncated));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }
    fn t(s: &str) -> Value {
        Value::text(s)
    }
    fn map(entries: Vec<(Value, Value)>) -> Value {
        Value::Map(Map::from_entries(entries).unwrap())
    }

    /// RFC 8949 Appendix A, the vectors inside our data model. Each one is
    /// checked both ways: encoding gives the bytes, decoding gives the value.
    fn appendix_a() -> Vec<(Value, &'static str)> {
        use Value::*;
        vec![
            (Unsigned(0), "00"),
            (Unsigned(1), "01"),
            (Unsigned(10), "0a"),
            (Unsigned(23), "17"),
            (Unsigned(24), "1818"),
            (Unsigned(25), "1819"),
            (Unsigned(100), "1864"),
            (Unsigned(1000), "1903e8"),
            (Unsigned(1_000_000), "1a000f4240"),
            (Unsigned(1_000_000_000_000), "1b000000e8d4a51000"),
            (Unsigned(u64::MAX), "1bffffffffffffffff"),
            (Negative(u64::MAX), "3bffffffffffffffff"),
            (Value::int(-1), "20"),
            (Value::int(-10), "29"),
            (Value::int(-100), "3863"),
            (Value::int(-1000), "3903e7"),
            (Bool(false), "f4"),
            (Bool(true), "f5"),
            (Null, "f6"),
            (Bytes(vec![]), "40"),
            (Bytes(vec![1, 2, 3, 4]), "4401020304"),
            (t(""), "60"),
            (t("a"), "6161"),
            (t("IETF"), "6449455446"),
            (t("\"\\"), "62225c"),
            (t("\u{00fc}"), "62c3bc"),
            (t("\u{6c34}"), "63e6b0b4"),
            (t("\u{10151}"), "64f0908591"),
            (Array(vec![]), "80"),
            (
                Array(vec![Unsigned(1), Unsigned(2), Unsigned(3)]),
                "83010203",
            ),
            (
                Array(vec![
                    Unsigned(1),
                    Array(vec![Unsigned(2), Unsigned(3)]),
                    Array(vec![Unsigned(4), Unsigned(5)]),
                ]),
                "8301820203820405",
            ),
            (
                Array((1..=25).map(Unsigned).collect()),
                "98190102030405060708090a0b0c0d0e0f101112131415161718181819",
            ),
            (map(vec![]), "a0"),
            (
                map(vec![(Unsigned(1), Unsigned(2)), (Unsigned(3), Unsigned(4))]),
                "a201020304",
            ),
            (
                map(vec![
                    (t("a"), Unsigned(1)),
                    (t("b"), Array(vec![Unsigned(2), Unsigned(3)])),
                ]),
                "a26161016162820203",
            ),
            (
                Array(vec![t("a"), map(vec![(t("b"), t("c"))])]),
                "826161a161626163",
            ),
            (
                map(vec![
                    (t("e"), t("E")),
                    (t("d"), t("D")),
                    (t("c"), t("C")),
                    (t("b"), t("B")),
                    (t("a"), t("A")),
                ]),
                "a56161614161626142616361436164614461656145",
            ),
        ]
    }

    #[test]
    fn rfc8949_appendix_a_vectors() {
        for (value, hex_bytes) in appendix_a() {
            assert_eq!(
                hex::encode(value.to_canonical_bytes()),
                hex_bytes,
                "{value:?}"
            );
            assert_eq!(decode(&h(hex_bytes)).unwrap(), value, "{hex_bytes}");
        }
    }

    #[test]
    fn text_keys_sort_shorter_first_then_bytewise() {
        // Rust's String order would put "aa" before "b"; RFC 8949 §4.2.1
        // compares encodings, where the length in the head comes first.
        let m = map(vec![
            (t("aa"), Value::Unsigned(1)),
            (t("b"), Value::Unsigned(2)),
            (t("a"), Value::Unsigned(3)),
        ]);
        assert_eq!(
            hex::encode(m.to_canonical_bytes()),
            "a361610361620262616101"
        );
        // Mixed key types sort by their encodings too: integers (major 0)
        // before negatives (1) before text (3).
        let mixed = map(vec![
            (t("a"), Value::Null),
            (Value::int(-1), Value::Null),
            (Value::Unsigned(10), Value::Null),
            (Value::Unsigned(100), Value::Null),
        ]);
        assert_eq!(
            hex::encode(mixed.to_canonical_bytes()),
            "a40af61864f620f66161f6"
        );
    }

    #[test]
    fn map_rejects_duplicate_keys_on_construction() {
        let err = Map::from_entries(vec![(t("a"), Value::Null), (t("a"), Value::Bool(true))]);
        assert_eq!(err.unwrap_err(), DuplicateKey(t("a")));
        let mut m = Map::new();
        m.insert(t("k"), Value::Null).unwrap();
        assert!(m.insert(t("k"), Value::Null).is_err());
    }

    #[test]
    fn rejects_every_non_canonical_form() {
        use DecodeErrorKind::*;
        let cases: &[(&str, DecodeErrorKind)] = &[
            // Non-shortest integers, one per head width, and a negative.
            ("1800", NonShortest),
            ("1817", NonShortest),
            ("190017", NonShortest),
            ("1900ff", NonShortest),
            ("1a0000ffff", NonShortest),
            ("1b00000000ffffffff", NonShortest),
            ("3800", NonShortest),
            // Non-shortest lengths of strings, arrays and maps.
            ("5800", NonShortest),
            ("780161", NonShortest),
            ("98 00", NonShortest),
            ("b800", NonShortest),
            ("990001 00", NonShortest),
            // Indefinite lengths.
            ("5f4101ff", Indefinite),
            ("7f6161ff", Indefinite),
            ("9f01ff", Indefinite),
            ("bf616101ff", Indefinite),
            ("ff", UnsupportedSimple),
            // Reserved additional information.
            ("1c", Reserved),
            ("5d", Reserved),
            // Floats of every width, including the ones equal to integers.
            ("f90000", Float),
            ("fa47c35000", Float),
            ("fb3ff0000000000000", Float),
            // Other simple values and tags.
            ("f7", UnsupportedSimple),
            ("f0", UnsupportedSimple),
            ("f820", UnsupportedSimple),
            ("c11a514b67b0", Tag),
            // Map key order and duplicates.
            ("a2616201616102", UnsortedKeys),
            ("a2626161016162 02", UnsortedKeys),
            ("a2616101616102", DuplicateKey),
            ("a2030401 02", UnsortedKeys),
            // Invalid UTF-8.
            ("62c328", InvalidUtf8),
            ("61ff", InvalidUtf8),
            ("63eda080", InvalidUtf8),
            // Truncation and trailing bytes.
            ("", Truncated),
            ("19 01", Truncated),
            ("4401", Truncated),
            ("83 0102", Truncated),
            ("9bffffffffffffffff", Truncated),
            ("bb7fffffffffffffff", Truncated),
            ("0000", TrailingBytes),
            ("a0 a0", TrailingBytes),
        ];
        for (hex_bytes, kind) in cases {
            let bytes = h(&hex_bytes.replace(' ', ""));
            let err = decode(&bytes).expect_err(hex_bytes);
            assert_eq!(&err.kind, kind, "{hex_bytes}");
        }
    }

    #[test]
    fn rejects_nesting_beyond_the_limit_without_recursing_forever() {
        let mut deep = vec![0x81u8; MAX_DEPTH + 1];
        deep.push(0x00);
        assert_eq!(decode(&deep).unwrap_err().kind, DecodeErrorKind::TooDeep);
        let mut ok = vec![0x81u8; MAX_DEPTH];
        ok.push(0x00);
        assert!(decode(&ok).is_ok());
    }

    pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<u64>().prop_map(Value::Unsigned),
            any::<u64>().prop_map(Value::Negative),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
            ".{0,20}".prop_map(Value::Text),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(|entries| {
                    let mut m = Map::new();
                    for (k, v) in entries {
                        let _ = m.insert(k, v);
                    }
                    Value::Map(m)
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decode_of_encode_is_identity(v in arb_value()) {
            let bytes = v.to_canonical_bytes();
            prop_assert_eq!(decode(&bytes).unwrap(), v);
        }

        #[test]
        fn every_accepted_input_reencodes_to_itself(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(v) = decode(&bytes) {
                prop_assert_eq!(v.to_canonical_bytes(), bytes);
            }
        }

        #[test]
        fn every_accepted_mutation_reencodes_to_itself(
            v in arb_value(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            // Random bytes are almost never valid CBOR; mutating a valid
            // encoding explores inputs near the accepted set.
            let mut bytes = v.to_canonical_bytes();
            for (i, b) in flips {
                let i = i.index(bytes.len());
                bytes[i] = b;
            }
            if let Ok(decoded) = decode(&bytes) {
                prop_assert_eq!(decoded.to_canonical_bytes(), bytes);
            }
        }
    }
}
