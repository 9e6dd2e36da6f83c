//! A small JSON reader and writer, below the protocol: clients read server
//! frames with it and write strings in client frames, and presence objects
//! (`JsonObject`) are checked and compacted through it.
//!
//! serde's deserializers cost the browser bundle tens of kilobytes (generic
//! visitors per type, float parsing and printing for error messages). Server
//! frames are simple, so clients read them into this tree and pick fields by
//! hand. Non-negative integers are read as numbers (the protocol has no other
//! kind); any other number is kept as its text, so an app's presence object
//! (`info`, `data`) is passed on exactly.

use crate::prelude::*;

use crate::text::{push_decimal, push_hex_byte};

/// A parsed JSON value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer in `0..=u64::MAX`.
    Num(u64),
    /// Any other number, as written.
    Other(Box<str>),
    /// A string, unescaped.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object, in document order.
    Obj(Vec<(String, Json)>),
}

/// Nesting deeper than this is refused (no frame of ours nests past 5).
const MAX_DEPTH: usize = 32;

impl Json {
    /// Parses a whole document; `None` if it is not valid JSON.
    pub fn parse(text: &str) -> Option<Json> {
        let mut p = Parser {
            text,
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value(0)?;
        p.ws();
        (p.i == p.s.len()).then_some(v)
    }

    /// The member `key` of an object (the first, if repeated).
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is a non-negative one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// How deep arrays and objects nest: 0 for a scalar, 1 for `{}`.
    pub fn depth(&self) -> usize {
        let inner = match self {
            Json::Arr(a) => a.iter().map(Json::depth).max(),
            Json::Obj(o) => o.iter().map(|(_, v)| v.depth()).max(),
            _ => return 0,
        };
        1 + inner.unwrap_or(0)
    }

    /// Appends this value as compact JSON.
    pub fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => push_decimal(out, *n),
            Json::Other(s) => out.push_str(s),
            Json::Str(s) => write_string(out, s),
            Json::Arr(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Json::Obj(o) => {
                out.push('{');
                for (i, (k, v)) in o.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }
}

/// Appends `s` as a JSON string. Ids and status texts hold no control
/// characters (their constructors refuse them), but escape them anyway.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                push_hex_byte(out, c as u8);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

struct Parser<'a> {
    /// The input, for slicing runs of characters out without `from_utf8`.
    text: &'a str,
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.s.get(self.i) == Some(&b)).then(|| self.i += 1)
    }

    fn lit(&mut self, word: &[u8], v: Json) -> Option<Json> {
        // `get`, not indexing: a panicking slice costs the bundle its message.
        let rest = self.s.get(self.i..).unwrap_or_default();
        rest.starts_with(word).then(|| {
            self.i += word.len();
            v
        })
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match *self.s.get(self.i)? {
            b'n' => self.lit(b"null", Json::Null),
            b't' => self.lit(b"true", Json::Bool(true)),
            b'f' => self.lit(b"false", Json::Bool(false)),
            b'"' => self.string().map(Json::Str),
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat(b']').is_none() {
                    loop {
                        items.push(self.value(depth + 1)?);
                        self.ws();
                        if self.eat(b',').is_none() {
                            self.eat(b']')?;
                            break;
                        }
                    }
                }
                Some(Json::Arr(items))
            }
            b'{' => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.eat(b'}').is_none() {
                    loop {
                        self.ws();
                        let key = self.string()?;
                        self.ws();
                        self.eat(b':')?;
                        members.push((key, self.value(depth + 1)?));
                        self.ws();
                        if self.eat(b',').is_none() {
                            self.eat(b'}')?;
                            break;
                        }
                    }
                }
                Some(Json::Obj(members))
            }
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Option<Json> {
        let first = self.i;
        let negative = self.eat(b'-').is_some();
        let start = self.i;
        let n = self.digits();
        if n == 0 || (n > 1 && self.s.get(start) == Some(&b'0')) {
            return None;
        }
        let int = self.s.get(start..self.i)?;
        let mut integral = !negative;
        if self.eat(b'.').is_some() {
            integral = false;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            integral = false;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        let value = integral
            .then(|| {
                int.iter().try_fold(0u64, |acc, d| {
                    acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                })
            })
            .flatten();
        Some(match value {
            Some(n) => Json::Num(n),
            None => Json::Other(self.text.get(first..self.i)?.into()),
        })
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.s.get(self.i..self.i + 4)?;
        self.i += 4;
        h.iter()
            .try_fold(0u32, |acc, &c| Some(acc * 16 + char::from(c).to_digit(16)?))
    }

    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = String::new();
        loop {
            let start = self.i;
            while let Some(&c) = self.s.get(self.i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            // We stopped at ASCII, so this is a char boundary.
            out.push_str(self.text.get(start..self.i)?);
            match *self.s.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return Some(out);
                }
                b'\\' => {
                    self.i += 1;
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                self.eat(b'\\')?;
                                self.eat(b'u')?;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    out.push(c);
                }
                _ => return None, // a raw control character
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_serde_json_on_tricky_documents() {
        for text in [
            r#"{"a":[1,2,{"b":null}],"c":"x\"y\\z\u00e9\ud83d\ude00","d":true,"e":false}"#,
            r#"  [ ]  "#,
            r#"{}"#,
            r#"[0, 18446744073709551615, -1, 1.5, 2e3, 9007199254740993]"#,
            r#""\/\b\f\n\r\t""#,
        ] {
            let ours = Json::parse(text).unwrap_or_else(|| panic!("{text}"));
            let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(to_serde(&ours), normalize(theirs), "{text}");
        }
    }

    #[test]
    fn writes_back_compactly_with_every_number_as_written() {
        let text = r#"{"x":-1.5e3,"y":0.25,"n":7,"s":"a\"b","l":[true,null,{}]}"#;
        let mut out = String::new();
        Json::parse(text).unwrap().write(&mut out);
        assert_eq!(out, text);
        assert_eq!(Json::parse(r#"{"a":[{"b":1}]}"#).unwrap().depth(), 3);
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for text in [
            "",
            "{",
            "[1,]",
            "{\"a\"}",
            "{\"a\":1,}",
            "01",
            "1.",
            "1e",
            "-",
            "\"\\x\"",
            "\"\u{1}\"",
            "nul",
            "[1] 2",
            "\"\\ud800\"",
            "\"\\ud800\\u0041\"",
        ] {
            assert!(Json::parse(text).is_none(), "{text:?}");
            assert!(
                serde_json::from_str::<serde_json::Value>(text).is_err(),
                "{text:?}"
            );
        }
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(Json::parse(&deep).is_none(), "nesting is bounded");
    }

    fn to_serde(j: &Json) -> serde_json::Value {
        use serde_json::Value as V;
        match j {
            Json::Null => V::Null,
            Json::Bool(b) => V::Bool(*b),
            Json::Num(n) => V::from(*n),
            Json::Other(_) => V::String("<other number>".into()),
            Json::Str(s) => V::String(s.clone()),
            Json::Arr(a) => V::Array(a.iter().map(to_serde).collect()),
            Json::Obj(o) => V::Object(o.iter().map(|(k, v)| (k.clone(), to_serde(v))).collect()),
        }
    }

    fn normalize(v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value as V;
        match v {
            V::Number(n) if n.as_u64().is_some() => V::Number(n),
            V::Number(_) => V::String("<other number>".into()),
            V::Array(a) => V::Array(a.into_iter().map(normalize).collect()),
            V::Object(o) => V::Object(o.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
            other => other,
        }
    }
}
