//! A webhook body as JSON, for the receive step and the providers: validated in one
//! pass and navigated without building a tree.
//!
//! Receiving needs a handful of fields from each body (`type`, `id`, `created`, a
//! required field's dot path …) and to know whether the body is JSON at all. Parsing
//! into a `serde_json::Value` allocated every key, string and container of every
//! body (dozens of allocations for a small Stripe event) just to read three of them. A
//! [`BodyJson`] keeps the text, and each level keeps only the positions of its members
//! (as [`RawValue`] slices of the text); a member is parsed when it is asked for.
//!
//! Invariants:
//! - [`BodyJson::parse`] accepts exactly the texts `serde_json` accepts as one JSON
//!   value (UTF-8, no trailing characters), with no depth limit: nesting is skipped,
//!   not recursed into.
//! - Lookups follow `serde_json::Value`'s answers: the last of repeated keys wins,
//!   `as_i64` is `None` for floats and out-of-range numbers, `as_str` only for
//!   strings.

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer;
use serde::de::{self, Deserialize, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// One JSON value: its text and, for containers, where its members are.
#[derive(Clone)]
pub struct BodyJson<'a> {
    raw: &'a str,
    level: Level<'a>,
}

#[derive(Clone)]
enum Level<'a> {
    Object(Vec<(Cow<'a, str>, &'a RawValue)>),
    Array(Vec<&'a RawValue>),
    Scalar,
}

impl fmt::Debug for BodyJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BodyJson").field(&self.raw).finish()
    }
}

impl<'a> BodyJson<'a> {
    /// Validates `bytes` as one JSON value and indexes its top level.
    ///
    /// An object or array is validated and indexed in one pass over the text (every
    /// delivery pays for this); anything else goes through `serde_json`'s `RawValue`,
    /// whose errors it then reports.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        const WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];
        if let Ok(text) = std::str::from_utf8(bytes) {
            let value = text.trim_matches(WHITESPACE);
            if let Some(b'{' | b'[') = value.as_bytes().first() {
                // Members are `RawValue`s: validated, not recursed into; trailing
                // characters are refused.
                let level = serde_json::from_str::<LevelDe<'a>>(text)?.0;
                return Ok(Self { raw: value, level });
            }
        }
        let raw: &'a RawValue = serde_json::from_slice(bytes)?;
        Ok(Self::of(raw))
    }

    /// A value already validated (a member of a parsed value).
    fn of(raw: &'a RawValue) -> Self {
        let text = raw.get();
        let level = match text.as_bytes().first() {
            Some(b'{' | b'[') => serde_json::from_str::<LevelDe<'a>>(text)
                .map(|l| l.0)
                // Unreachable for validated text; a scalar answers nothing, safely.
                .unwrap_or(Level::Scalar),
            _ => Level::Scalar,
        };
        Self { raw: text, level }
    }

    /// The member `key` of an object (the last one, if repeated).
    pub fn get(&self, key: &str) -> Option<BodyJson<'a>> {
        match &self.level {
            Level::Object(members) => members
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| Self::of(v)),
            _ => None,
        }
    }

    /// Element `i` of an array.
    pub fn index(&self, i: usize) -> Option<BodyJson<'a>> {
        match &self.level {
            Level::Array(items) => items.get(i).map(|v| Self::of(v)),
            _ => None,
        }
    }

    /// True for an array.
    pub fn is_array(&self) -> bool {
        matches!(self.level, Level::Array(_))
    }

    /// The value at a dot path (`data.object.id`; array elements by number).
    pub fn at(&self, path: &str) -> Option<BodyJson<'a>> {
        let mut parts = path.split('.');
        let mut cur = self.member(parts.next()?)?;
        for part in parts {
            cur = cur.member(part)?;
        }
        Some(cur)
    }

    /// One step of a dot path: an object's key or an array's index.
    fn member(&self, part: &str) -> Option<BodyJson<'a>> {
        match &self.level {
            Level::Object(_) => self.get(part),
            Level::Array(_) => self.index(part.parse().ok()?),
            Level::Scalar => None,
        }
    }

    /// The text of a string value (unescaped).
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        if !self.raw.starts_with('"') {
            return None;
        }
        serde_json::from_str::<Text<'a>>(self.raw).ok().map(|t| t.0)
    }

    /// A string value as an owned `String`.
    pub fn string(&self) -> Option<String> {
        self.as_str().map(Cow::into_owned)
    }

    /// An integer value that fits `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self.raw.as_bytes().first() {
            Some(b'-' | b'0'..=b'9') => serde_json::from_str::<i64>(self.raw).ok(),
            _ => None,
        }
    }

    /// True for `null`.
    pub fn is_null(&self) -> bool {
        self.raw == "null"
    }

    /// The value's JSON text.
    pub fn raw(&self) -> &'a str {
        self.raw
    }
}

/// One level of a container, members kept as slices.
struct LevelDe<'a>(Level<'a>);

impl<'de> Deserialize<'de> for LevelDe<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LevelDe<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object or array")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key, value));
                }
                Ok(LevelDe(Level::Object(members)))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(8));
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    items.push(item);
                }
                Ok(LevelDe(Level::Array(items)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string, borrowed from the text when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every lookup answers what `serde_json::Value` answers.
    fn same(text: &str, paths: &[&str]) {
        let value: Value = serde_json::from_str(text).unwrap();
        let body = BodyJson::parse(text.as_bytes()).unwrap();
        for path in paths {
            let v = path.split('.').try_fold(&value, |cur, part| match cur {
                Value::Object(m) => m.get(part),
                Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            });
            let b = body.at(path);
            assert_eq!(v.is_some(), b.is_some(), "{path} in {text}");
            if let (Some(v), Some(b)) = (v, b) {
                assert_eq!(v.as_str(), b.as_str().as_deref(), "{path} in {text}");
                assert_eq!(v.as_i64(), b.as_i64(), "{path} in {text}");
                assert_eq!(v.is_null(), b.is_null(), "{path} in {text}");
                assert_eq!(v.is_array(), b.is_array(), "{path} in {text}");
                let reparsed: Value = serde_json::from_str(b.raw()).unwrap();
                assert_eq!(&reparsed, v, "{path} in {text}");
            }
        }
    }

    #[test]
    fn lookups_answer_like_serde_json_value() {
        same(
            r#" {"id":"evt_1","type":"invoice.paid","created":1700000000,"n":null,
                "data":{"object":{"id":"in_1","amount":-5,"f":1.5,"big":18446744073709551615}},
                "list":[{"type":"a"},2,"x"]} "#,
            &[
                "id",
                "type",
                "created",
                "n",
                "missing",
                "data.object.id",
                "data.object.amount",
                "data.object.f",
                "data.object.big",
                "data.object.id.deeper",
                "list.0.type",
                "list.1",
                "list.2",
                "list.3",
                "list.x",
                "data",
            ],
        );
        same(r#"[{"type":"call.completed"}]"#, &["0.type", "0", "1"]);
        same(r#""just a string""#, &["a"]);
    }

    #[test]
    fn escapes_and_repeated_keys_follow_serde_json() {
        same(
            r#"{"type":"first","ty\u0070e":"second","e":"a\"b\\c\u00e9\n"}"#,
            &["type", "e"],
        );
        let b = BodyJson::parse(br#"{"k":"plain"}"#).unwrap();
        assert!(matches!(
            b.get("k").unwrap().as_str(),
            Some(Cow::Borrowed("plain"))
        ));
    }

    #[test]
    fn invalid_texts_are_refused_like_serde_json() {
        for text in [
            &b""[..],
            b"{",
            b"{\"a\":1,}",
            b"{\"a\":1} x",
            b"[1,2",
            b"{\"a\":\"\xff\"}",
            b"nul",
            b"{\"type\": oops",
            b"{\"a\":[1,}",
            b"[1] [2]",
            b"{\"a\":{\"b\":\"\xc3\"}}",
            b"\xef\xbb\xbf{}",
        ] {
            assert!(serde_json::from_slice::<Value>(text).is_err());
            assert!(BodyJson::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn the_top_level_text_is_the_value_without_surrounding_whitespace() {
        for text in [" \r\n\t{\"a\": [1, 2]}\n ", "[ ]", "\"s\" ", " 12"] {
            let raw: &RawValue = serde_json::from_str(text).unwrap();
            assert_eq!(BodyJson::parse(text.as_bytes()).unwrap().raw(), raw.get());
        }
    }

    #[test]
    fn deep_nesting_is_skipped_not_recursed() {
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let b = BodyJson::parse(text.as_bytes()).unwrap();
        assert!(b.is_array());
        assert!(b.index(0).unwrap().index(0).unwrap().is_array());
    }
}
