//! A JSON request body as the schema validator reads it, borrowed from the body.
//!
//! `serde_json::Value` gives every string and key its own allocation and every object a
//! B-tree; for the small bodies of API requests, building and dropping that cost more than
//! validating it. [`Doc`] is parsed by serde_json (its grammar, its number parsing and its
//! nesting limit of 128), keeps strings without escapes as slices of the body, and keeps each
//! object's members in one vector, in the order they came. jsonschema validates it through its
//! interface for custom representations ([`Borrowed`]).
//!
//! One difference from `Value`: a key repeated within one object is an error. `Value` keeps the
//! last one silently, while other parsers keep the first, so a body such as
//! `{"qty": 1, "qty": -5}` could be validated as one thing and used upstream as another.

use std::{borrow::Cow, fmt};

use jsonschema::{
    json::{Array, Json, Node, NodeIdentity, Object},
    JsonType,
};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// One JSON value; strings without escapes borrow from the body.
#[derive(Debug, PartialEq)]
pub enum Doc<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Doc<'a>>),
    /// Members in the order they came; no key twice.
    Object(Vec<(Cow<'a, str>, Doc<'a>)>),
}

impl<'a> Doc<'a> {
    /// Parses a whole body: one JSON value, with only whitespace around it.
    pub fn parse(body: &'a [u8]) -> Result<Doc<'a>, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// Most members whose keys are compared pairwise for duplicates; larger objects sort them.
const PAIRWISE_KEYS: usize = 16;

fn first_duplicate<'k>(members: &'k [(Cow<'_, str>, Doc<'_>)]) -> Option<&'k str> {
    if members.len() <= PAIRWISE_KEYS {
        return members.iter().enumerate().find_map(|(i, (k, _))| {
            members[..i]
                .iter()
                .any(|(prev, _)| prev == k)
                .then_some(&**k)
        });
    }
    let mut keys: Vec<&str> = members.iter().map(|(k, _)| &**k).collect();
    keys.sort_unstable();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// A key, borrowed when it holds no escape.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }

            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Doc<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Doc<'de>, E> {
        Ok(Doc::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Doc<'de>, E> {
        Ok(Doc::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Doc<'de>, E> {
        Ok(Doc::Number(n.into()))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Doc<'de>, E> {
        Ok(Doc::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Doc<'de>, E> {
        // serde_json refuses numbers out of range itself; JSON has no others that are not finite.
        Number::from_f64(n)
            .map(Doc::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Doc<'de>, E> {
        Ok(Doc::String(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Doc<'de>, E> {
        Ok(Doc::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Doc<'de>, E> {
        Ok(Doc::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Doc::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc<'de>, A::Error> {
        let mut members = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            members.push((key, map.next_value()?));
        }
        if let Some(k) = first_duplicate(&members) {
            let shown: String = k.chars().take(64).collect();
            return Err(de::Error::custom(format_args!("duplicate key {shown:?}")));
        }
        Ok(Doc::Object(members))
    }
}

/// [`Doc`] to jsonschema.
pub struct Borrowed;

impl Json for Borrowed {
    type Node<'a> = &'a Doc<'a>;
    type PreparedKey = String;
    type StringBuffer = ();

    // Objects are vectors: one pass over the members costs no more than one lookup.
    const KEYS_PER_LOOKUP: usize = 64;
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(Self::Node<'_>) -> T) -> T {
        f(&Doc::String(Cow::Borrowed(string)))
    }
}

impl<'a> Node<'a, Borrowed> for &'a Doc<'a> {
    type Object = &'a [(Cow<'a, str>, Doc<'a>)];
    type Array = &'a [Doc<'a>];
    type Number = &'a Number;

    fn as_object(&self) -> Option<Self::Object> {
        match self {
            Doc::Object(members) => Some(members),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<Self::Array> {
        match self {
            Doc::Array(items) => Some(items),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self {
            Doc::String(s) => Some(Cow::Borrowed(&**s)),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self {
            Doc::Number(n) => Some(n),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self {
            Doc::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Doc::Null)
    }

    fn json_type(&self) -> JsonType {
        match self {
            Doc::Null => JsonType::Null,
            Doc::Bool(_) => JsonType::Boolean,
            Doc::Number(_) => JsonType::Number,
            Doc::String(_) => JsonType::String,
            Doc::Array(_) => JsonType::Array,
            Doc::Object(_) => JsonType::Object,
        }
    }

    fn string_length_within(&self, min: u64, max: u64) -> Option<bool> {
        let Doc::String(s) = self else {
            return None;
        };
        // A code point takes one to four bytes: the byte count often decides alone.
        let (bytes, fewest) = (s.len() as u64, (s.len() as u64).div_ceil(4));
        if bytes < min || fewest > max {
            return Some(false);
        }
        if min <= fewest && bytes <= max {
            return Some(true);
        }
        Some((min..=max).contains(&(s.chars().count() as u64)))
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(to_value(self))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(
            std::ptr::from_ref::<Doc<'a>>(*self) as usize
        ))
    }
}

/// The same value as serde_json's.
pub fn to_value(doc: &Doc<'_>) -> Value {
    match doc {
        Doc::Null => Value::Null,
        Doc::Bool(b) => Value::Bool(*b),
        Doc::Number(n) => Value::Number(n.clone()),
        Doc::String(s) => Value::String(s.to_string()),
        Doc::Array(items) => Value::Array(items.iter().map(to_value).collect()),
        Doc::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.to_string(), to_value(v)))
                .collect::<Map<_, _>>(),
        ),
    }
}

pub struct Members<'a>(std::slice::Iter<'a, (Cow<'a, str>, Doc<'a>)>);

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, &'a Doc<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (&**k, v))
    }
}

impl<'a> Object<'a, Borrowed> for &'a [(Cow<'a, str>, Doc<'a>)] {
    type Node = &'a Doc<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        <[_]>::len(self)
    }

    fn get(&self, key: &String) -> Option<&'a Doc<'a>> {
        self.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn members(&self) -> Members<'a> {
        Members(self.iter())
    }
}

impl<'a> Array<'a, Borrowed> for &'a [Doc<'a>] {
    type Node = &'a Doc<'a>;
    type ElementsIter = std::slice::Iter<'a, Doc<'a>>;

    fn len(&self) -> usize {
        <[_]>::len(self)
    }

    fn elements(&self) -> Self::ElementsIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let body = br#"{"plain": "abc", "esc\u0041ped": "a\nb", "list": [1, -2, 3.5, true, null]}"#;
        let doc = Doc::parse(body).unwrap();
        let Doc::Object(members) = &doc else {
            panic!("{doc:?}")
        };
        assert!(matches!(members[0].0, Cow::Borrowed("plain")));
        assert!(matches!(&members[0].1, Doc::String(Cow::Borrowed("abc"))));
        assert!(matches!(&members[1].0, Cow::Owned(k) if k == "escAped"));
        assert!(matches!(&members[1].1, Doc::String(Cow::Owned(s)) if s == "a\nb"));
        let value: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(to_value(&doc), value);
    }

    #[test]
    fn a_repeated_key_is_an_error_at_any_size() {
        for n in [2usize, PAIRWISE_KEYS, PAIRWISE_KEYS + 5] {
            let mut body = String::from("{");
            for i in 0..n - 1 {
                body.push_str(&format!("\"k{i}\": {i}, "));
            }
            // The last key repeats the first, escaped so that only its decoded form is equal.
            body.push_str("\"\\u006b0\": 1}");
            let e = Doc::parse(body.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("duplicate key \"k0\""), "{n}: {e}");
        }
        let nested = br#"{"a": {"b": 1, "b": 2}}"#;
        assert!(Doc::parse(nested).is_err());
        // The same key in two objects is no repeat.
        assert!(Doc::parse(br#"[{"a": 1}, {"a": 2}]"#).is_ok());
    }

    #[test]
    fn what_serde_json_refuses_is_refused() {
        for body in [
            &b""[..],
            b"{",
            b"{\"a\": 1,}",
            b"[1, 2",
            b"01",
            b"1e400",
            b"NaN",
            b"\"\\ud800\"",
            b"\"a\x01b\"",
            b"{} {}",
            b"\xff",
            b"\"\xc0\xaf\"",
        ] {
            assert!(Doc::parse(body).is_err(), "{body:?}");
            assert!(serde_json::from_slice::<Value>(body).is_err(), "{body:?}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(Doc::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn conforms_to_the_validators_contract() {
        let text = serde_json::to_vec(&jsonschema::json::conformance::document()).unwrap();
        let doc = Doc::parse(&text).unwrap();
        jsonschema::json::conformance::assert_conformance::<Borrowed>(&&doc);
    }

    /// The same verdict as the validator over `serde_json::Value`, for schemas with the
    /// keywords an API body's schema uses and bodies on both sides of each.
    #[test]
    fn verdicts_match_serde_json_values() {
        let schemas = [
            json!({"type": "object", "required": ["item", "quantity"],
                   "additionalProperties": false,
                   "properties": {"item": {"type": "string", "minLength": 1, "maxLength": 4},
                                  "quantity": {"type": "integer", "minimum": 1, "maximum": 10},
                                  "note": {"type": "string"}}}),
            json!({"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                   "minItems": 1, "maxItems": 3, "uniqueItems": true}),
            json!({"enum": ["a", 1, {"x": [1, 2]}, null]}),
            json!({"const": {"x": 1.0}}),
            json!({"type": "object", "propertyNames": {"pattern": "^[a-z]+$"},
                   "patternProperties": {"^n": {"type": "number"}},
                   "minProperties": 1, "maxProperties": 2}),
            json!({"oneOf": [{"type": "string", "format": "email"}, {"multipleOf": 3}]}),
            json!({"$defs": {"node": {"type": "object",
                                      "properties": {"next": {"$ref": "#/$defs/node"}}}},
                   "$ref": "#/$defs/node"}),
            json!({"type": "object", "dependentRequired": {"a": ["b"]},
                   "if": {"required": ["c"]}, "then": {"properties": {"c": {"type": "boolean"}}}}),
        ];
        let bodies = [
            r#"{"item": "abcd", "quantity": 3}"#,
            r#"{"item": "abcde", "quantity": 3}"#,
            r#"{"item": "ab\u00e9d", "quantity": 3}"#,
            r#"{"item": "日本語の", "quantity": 10}"#,
            r#"{"item": "x", "quantity": 0}"#,
            r#"{"item": "x", "quantity": 2.0}"#,
            r#"{"item": "x", "quantity": 2.5}"#,
            r#"{"item": "x", "quantity": 3, "extra": 1}"#,
            r#"{"quantity": 3}"#,
            r#"[1, 2]"#,
            r#"[1, 1.0]"#,
            r#"[0.5, 2, 3, 4]"#,
            r#"[]"#,
            r#"[-1]"#,
            r#""a""#,
            r#"{"x": [1, 2]}"#,
            r#"{"x": 1}"#,
            r#"null"#,
            r#"{"name": 1}"#,
            r#"{"Name": 1}"#,
            r#"{"n": "s"}"#,
            r#"{"a": 1, "b": 2, "c": 3}"#,
            r#"{"next": {"next": {"next": 1}}}"#,
            r#"{"next": {"next": {}}}"#,
            r#""someone@example.com""#,
            r#"9"#,
            r#"10"#,
            r#"18446744073709551615"#,
            r#"-9223372036854775808"#,
            r#"1e300"#,
            r#"{"a": 1}"#,
            r#"{"a": 1, "b": 2, "c": "x"}"#,
            r#"{"a": 1, "b": 2, "c": true}"#,
        ];
        for schema in &schemas {
            let fast = jsonschema::options_for::<Borrowed>().build(schema).unwrap();
            let full = jsonschema::validator_for(schema).unwrap();
            for body in bodies {
                let doc = Doc::parse(body.as_bytes()).unwrap();
                let value: Value = serde_json::from_str(body).unwrap();
                assert_eq!(
                    fast.is_valid(&doc),
                    full.is_valid(&value),
                    "{schema} on {body}"
                );
                let fast_errors: Vec<String> =
                    fast.iter_errors(&doc).map(|e| e.to_string()).collect();
                let full_errors: Vec<String> =
                    full.iter_errors(&value).map(|e| e.to_string()).collect();
                assert_eq!(fast_errors, full_errors, "{schema} on {body}");
            }
        }
    }
}
