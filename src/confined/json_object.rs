//! Rewriting some fields of a JSON object while keeping every other key and value byte for
//! byte (a worker's task and state files: what the operator does not own stays as written).

use std::fmt;

use serde::{de, Deserialize};
use serde_json::value::RawValue;

/// A JSON object as its raw (key, value) texts, in order, duplicates included: keys, values,
/// number formats, escapes and nesting are kept byte for byte. (Unlike an
/// `IndexMap<String, Box<RawValue>>`, a key written `"caf\u00e9"` keeps its escape and a
/// duplicate key is not silently dropped.)
pub(crate) type Pairs = Vec<(Box<RawValue>, Box<RawValue>)>;

struct RawObject(Pairs);

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = RawObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
                let mut pairs = Vec::new();
                while let Some(key) = map.next_key::<Box<RawValue>>()? {
                    pairs.push((key, map.next_value::<Box<RawValue>>()?));
                }
                Ok(RawObject(pairs))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Why bytes are not a JSON object.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ObjectError {
    #[error("empty file")]
    Empty,
    #[error("not UTF-8 (invalid byte at offset {})", .0.valid_up_to())]
    NotUtf8(#[source] std::str::Utf8Error),
    #[error("not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// Valid JSON whose top level is another kind: "an array", "null", ...
    #[error("top level is {0}, not an object")]
    NotAnObject(&'static str),
}

/// Parse `bytes` as a JSON object; `Err` says why it is not one.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Pairs, ObjectError> {
    if bytes.is_empty() {
        return Err(ObjectError::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(ObjectError::NotUtf8)?;
    let raw: Box<RawValue> = serde_json::from_str(text).map_err(ObjectError::NotJson)?;
    let kind = match raw.get().as_bytes().first() {
        Some(b'{') => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        _ => Some("a number"),
    };
    if let Some(kind) = kind {
        return Err(ObjectError::NotAnObject(kind));
    }
    serde_json::from_str::<RawObject>(raw.get())
        .map(|o| o.0)
        .map_err(ObjectError::NotJson)
}

/// The decoded text of a raw key.
fn key_text(key: &RawValue) -> Option<String> {
    serde_json::from_str(key.get()).ok()
}

/// The last value of `key` (JSON parsers keep the last of duplicate keys).
pub(crate) fn last_value<'a>(pairs: &'a Pairs, key: &str) -> Option<&'a RawValue> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| key_text(k).as_deref() == Some(key))
        .map(|(_, v)| &**v)
}

/// `pairs` with the values of `fields` replaced (at the first occurrence of each key, later
/// duplicates of it dropped) or appended in order; everything else verbatim. Compact.
pub(crate) fn replace_fields(pairs: &Pairs, fields: &[(&str, String)]) -> Vec<u8> {
    let mut json = String::with_capacity(256);
    json.push('{');
    let mut written = vec![false; fields.len()];
    let sep = |json: &mut String| {
        if json.len() > 1 {
            json.push(',');
        }
    };
    for (k, v) in pairs {
        let name = key_text(k);
        match fields.iter().position(|(f, _)| Some(*f) == name.as_deref()) {
            Some(i) if written[i] => {}
            Some(i) => {
                written[i] = true;
                sep(&mut json);
                json.push_str(k.get());
                json.push(':');
                json.push_str(&fields[i].1);
            }
            None => {
                sep(&mut json);
                json.push_str(k.get());
                json.push(':');
                json.push_str(v.get());
            }
        }
    }
    for (i, (f, value)) in fields.iter().enumerate() {
        if !written[i] {
            sep(&mut json);
            json.push_str(&json_string(f));
            json.push(':');
            json.push_str(value);
        }
    }
    json.push('}');
    json.into_bytes()
}

pub(crate) fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

pub(crate) fn json_f64(f: f64) -> String {
    serde_json::to_string(&f).expect("a finite float serializes")
}
