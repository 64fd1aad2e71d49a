//! The JSON view of a canonical value: its RFC 8785 (JCS) serialisation.
//!
//! The projection is total on the data model artifactstore uses and exact:
//! integers must lie within ±(2^53 − 1), the range JSON numbers carry without
//! rounding; byte strings become lowercase hex text; maps must have text keys,
//! and are emitted sorted by the UTF-16 code units of the keys, as RFC 8785
//! §3.2.3 requires (a different order from CBOR's).

use crate::cbor::{Map, Value};

/// The largest integer artifactstore stores anywhere: 2^53 − 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A value with no exact JSON projection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JcsError {
    #[error("integer outside ±(2^53 - 1)")]
    IntegerOutOfRange,
    #[error("map key is not text")]
    NonTextKey,
}

/// Serialises `value` as JCS text.
pub fn to_jcs(value: &Value) -> Result<String, JcsError> {
    let mut out = String::new();
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut String) -> Result<(), JcsError> {
    match value {
        Value::Unsigned(n) => {
            if *n > MAX_SAFE_INTEGER {
                return Err(JcsError::IntegerOutOfRange);
            }
            out.push_str(&n.to_string());
        }
        Value::Negative(n) => {
            // The value is -1 - n; its magnitude n + 1 must be safe.
            if *n >= MAX_SAFE_INTEGER {
                return Err(JcsError::IntegerOutOfRange);
            }
            out.push('-');
            out.push_str(&(n + 1).to_string());
        }
        Value::Bytes(b) => {
            out.push('"');
            out.push_str(&hex::encode(b));
            out.push('"');
        }
        Value::Text(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out)?;
            }
            out.push(']');
        }
        Value::Map(m) => {
            let mut entries = m
                .iter()
                .map(|(k, v)| k.as_text().map(|k| (k, v)).ok_or(JcsError::NonTextKey))
                .collect::<Result<Vec<_>, _>>()?;
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_value(v, out)?;
            }
            out.push('}');
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
    Ok(())
}

/// RFC 8785 §3.2.2.2: the ECMAScript `JSON.stringify` string form. Only `"`,
/// `\` and the C0 controls are escaped; everything else is literal UTF-8.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// JSON that cannot be read into the data model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON: {0}")]
pub struct JsonError(String);

/// Reads JSON text into a [`Value`], strictly: integers only (no fractions,
/// exponents or values beyond ±(2^53 − 1)), no duplicate object keys.
/// Strings stay text: which of them are hex byte strings is for the schema
/// reading the value to say (see `Manifest::from_json_value`).
pub fn parse_json(text: &str) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = <StrictValue as serde::Deserialize>::deserialize(&mut de)
        .map(|StrictValue(v)| v)
        .map_err(|e: serde_json::Error| JsonError(e.to_string()))?;
    de.end().map_err(|e| JsonError(e.to_string()))?;
    Ok(v)
}

struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value with integer numbers only")
    }
    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(b)))
    }
    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<StrictValue, E> {
        if n > MAX_SAFE_INTEGER {
            return Err(E::custom(format!("integer {n} exceeds 2^53 - 1")));
        }
        Ok(StrictValue(Value::Unsigned(n)))
    }
    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<StrictValue, E> {
        if n.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(E::custom(format!(
                "integer {n} exceeds 2^53 - 1 in magnitude"
            )));
        }
        Ok(StrictValue(Value::int(n)))
    }
    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<StrictValue, E> {
        Err(E::custom(format!(
            "number {n} is not an integer (or is out of range)"
        )))
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::text(s)))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(StrictValue(Value::Array(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        let mut m = Map::new();
        while let Some((k, StrictValue(v))) = map.next_entry::<String, StrictValue>()? {
            m.insert(Value::text(&k), v)
                .map_err(|_| serde::de::Error::custom(format!("duplicate key {k:?}")))?;
        }
        Ok(StrictValue(Value::Map(m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Value {
        Value::text(s)
    }

    #[test]
    fn scalars() {
        assert_eq!(to_jcs(&Value::Null).unwrap(), "null");
        assert_eq!(to_jcs(&Value::Bool(true)).unwrap(), "true");
        assert_eq!(to_jcs(&Value::Unsigned(0)).unwrap(), "0");
        assert_eq!(to_jcs(&Value::int(-1)).unwrap(), "-1");
        assert_eq!(
            to_jcs(&Value::Unsigned(MAX_SAFE_INTEGER)).unwrap(),
            "9007199254740991"
        );
        assert_eq!(
            to_jcs(&Value::int(-9007199254740991)).unwrap(),
            "-9007199254740991"
        );
        assert_eq!(
            to_jcs(&Value::Unsigned(MAX_SAFE_INTEGER + 1)),
            Err(JcsError::IntegerOutOfRange)
        );
        assert_eq!(
            to_jcs(&Value::int(-9007199254740992)),
            Err(JcsError::IntegerOutOfRange)
        );
        assert_eq!(
            to_jcs(&Value::Bytes(vec![0x00, 0xab, 0xff])).unwrap(),
            "\"00abff\""
        );
    }

    #[test]
    fn string_escaping_follows_rfc8785() {
        // RFC 8785 §3.2.2.2 example string, with the euro sign and the
        // controls U+000F and U+001F, DEL left literal.
        let s = "\u{20ac}$\u{000f}\u{000a}A'\u{0042}\u{0022}\u{005c}\\\"/\u{7f}";
        assert_eq!(
            to_jcs(&t(s)).unwrap(),
            "\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\u{7f}\""
        );
        assert_eq!(
            to_jcs(&t("\u{08}\u{0c}\r\t\u{1f}")).unwrap(),
            "\"\\b\\f\\r\\t\\u001f\""
        );
        assert_eq!(to_jcs(&t("\u{2028}é")).unwrap(), "\"\u{2028}é\"");
    }

    #[test]
    fn object_keys_sort_by_utf16_code_units() {
        // RFC 8785 §3.2.3 sorting example: the keys in the order JCS wants.
        let keys = [
            "\r",
            "1",
            "\u{80}",
            "\u{f6}",
            "\u{20ac}",
            "\u{1f600}",
            "\u{fb33}",
        ];
        let mut m = Map::new();
        for (i, k) in keys.iter().enumerate().rev() {
            m.insert(t(k), Value::Unsigned(i as u64)).unwrap();
        }
        let jcs = to_jcs(&Value::Map(m)).unwrap();
        assert_eq!(
            jcs,
            "{\"\\r\":0,\"1\":1,\"\u{80}\":2,\"\u{f6}\":3,\"\u{20ac}\":4,\"\u{1f600}\":5,\"\u{fb33}\":6}"
        );
    }

    #[test]
    fn nested_structure_and_differs_from_cbor_key_order() {
        // CBOR puts "b" before "aa" (shorter first); JCS puts "aa" first.
        let m = Map::new()
            .with("b", Value::Array(vec![Value::Unsigned(1), Value::Null]))
            .with("aa", Value::Bytes(vec![1]));
        assert_eq!(
            to_jcs(&Value::Map(m)).unwrap(),
            "{\"aa\":\"01\",\"b\":[1,null]}"
        );
    }

    /// Values inside the JCS domain: safe integers, text keys.
    fn arb_jcs_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            (0..=MAX_SAFE_INTEGER).prop_map(Value::Unsigned),
            (0..MAX_SAFE_INTEGER).prop_map(Value::Negative),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
            any::<String>().prop_map(Value::Text),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
        ];
        leaf.prop_recursive(3, 32, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map(any::<String>(), inner, 0..5).prop_map(|m| {
                    Value::Map(m.into_iter().fold(Map::new(), |m, (k, v)| m.with(&k, v)))
                }),
            ]
        })
    }

    /// The JSON a value must parse back to: bytes as hex text.
    fn expected_json(v: &Value) -> serde_json::Value {
        use serde_json::Value as J;
        match v {
            Value::Unsigned(n) => J::from(*n),
            Value::Negative(n) => J::from(-1 - *n as i64),
            Value::Bytes(b) => J::from(hex::encode(b)),
            Value::Text(s) => J::from(s.as_str()),
            Value::Array(items) => J::Array(items.iter().map(expected_json).collect()),
            Value::Map(m) => J::Object(
                m.iter()
                    .map(|(k, v)| (k.as_text().unwrap().to_owned(), expected_json(v)))
                    .collect(),
            ),
            Value::Bool(b) => J::from(*b),
            Value::Null => J::Null,
        }
    }

    proptest! {
        #[test]
        fn output_is_json_that_parses_back_to_the_value(v in arb_jcs_value()) {
            let text = to_jcs(&v).unwrap();
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(parsed, expected_json(&v));
        }

        #[test]
        fn object_members_come_in_utf16_order(keys in proptest::collection::btree_set(any::<String>(), 0..8)) {
            let m = keys.iter().fold(Map::new(), |m, k| m.with(k, Value::Null));
            let text = to_jcs(&Value::Map(m)).unwrap();
            // A serde_json map without preserve_order is a BTreeMap; read
            // the members in document order from a stream instead.
            let mut de = serde_json::Deserializer::from_str(&text);
            let ordered: Vec<String> = {
                use serde::de::{Deserializer as _, MapAccess, Visitor};
                struct Keys;
                impl<'de> Visitor<'de> for Keys {
                    type Value = Vec<String>;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("map") }
                    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Vec<String>, A::Error> {
                        let mut out = Vec::new();
                        while let Some((k, _)) = a.next_entry::<String, serde::de::IgnoredAny>()? {
                            out.push(k);
                        }
                        Ok(out)
                    }
                }
                (&mut de).deserialize_map(Keys).unwrap()
            };
            let mut want: Vec<String> = keys.into_iter().collect();
            want.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            prop_assert_eq!(ordered, want);
        }
    }

    #[test]
    fn strict_json_reading() {
        let v =
            parse_json(r#"{"b": [1, -2, null, true], "a": "x", "n": 9007199254740991}"#).unwrap();
        assert_eq!(
            to_jcs(&v).unwrap(),
            r#"{"a":"x","b":[1,-2,null,true],"n":9007199254740991}"#
        );
        for bad in [
            r#"{"a": 1, "a": 2}"#,
            "1.5",
            "1e3",
            "9007199254740992",
            "-9007199254740992",
            "[1,]",
            "{} extra",
            "",
        ] {
            assert!(parse_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn non_text_keys_have_no_projection() {
        let m = Map::from_entries(vec![(Value::Unsigned(1), Value::Null)]).unwrap();
        assert_eq!(to_jcs(&Value::Map(m)), Err(JcsError::NonTextKey));
    }
}
