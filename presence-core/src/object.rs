//! App-defined presence fields (`info`, `data`): a JSON object kept as its
//! compact text, checked where it enters and copied as it is afterwards.

use crate::prelude::*;

use crate::json::Json;

/// Deepest nesting a presence object may have (the object itself is 1).
pub const MAX_OBJECT_DEPTH: usize = 8;

/// A JSON object, as compact JSON text.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct JsonObject(Box<str>);

/// Why a value is not a presence object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidObject {
    /// Not a JSON object (an array, a string, a number, …).
    #[error("must be a JSON object")]
    NotAnObject,
    /// Nested deeper than [`MAX_OBJECT_DEPTH`].
    #[error("nested deeper than 8 levels")]
    TooDeep,
    /// Its compact encoding is longer than allowed.
    #[error("too large")]
    TooLarge,
}

impl JsonObject {
    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its length in bytes, compact.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is `{}`.
    pub fn is_empty(&self) -> bool {
        &*self.0 == "{}"
    }

    /// Takes a parsed value (the clients' reader), re-encoded compactly.
    pub fn from_json(v: &Json, max_bytes: usize) -> Result<Self, InvalidObject> {
        if !matches!(v, Json::Obj(_)) {
            return Err(InvalidObject::NotAnObject);
        }
        if v.depth() > MAX_OBJECT_DEPTH {
            return Err(InvalidObject::TooDeep);
        }
        let mut out = String::new();
        v.write(&mut out);
        if out.len() > max_bytes {
            return Err(InvalidObject::TooLarge);
        }
        Ok(Self(out.into()))
    }

    /// Parses and checks JSON text (up to `max_bytes` once compact).
    pub fn parse(text: &str, max_bytes: usize) -> Result<Self, InvalidObject> {
        let v = Json::parse(text).ok_or(InvalidObject::NotAnObject)?;
        Self::from_json(&v, max_bytes)
    }
}

#[cfg(feature = "std")]
mod serde_impls {
    use super::*;
    use crate::limits::MAX_FRAME_BYTES;
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    impl Serialize for JsonObject {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            RawValue::from_string(self.0.to_string())
                .map_err(S::Error::custom)?
                .serialize(s)
        }
    }

    /// Accepts any object that fits a frame; the server applies its own,
    /// smaller bound where the object comes from a client. Through a
    /// `Value`, not a `RawValue`: our messages are internally tagged enums,
    /// which serde buffers, and a `RawValue` cannot come out of that buffer.
    impl<'de> Deserialize<'de> for JsonObject {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let v = serde_json::Value::deserialize(d)?;
            if !v.is_object() {
                return Err(D::Error::custom(InvalidObject::NotAnObject));
            }
            Self::parse(&v.to_string(), MAX_FRAME_BYTES).map_err(D::Error::custom)
        }
    }
}

/// Without `std` (the browser bundle) nothing goes through serde: frames
/// are read and written by hand, so these only satisfy the derives.
#[cfg(not(feature = "std"))]
mod serde_impls {
    use super::*;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    impl Serialize for JsonObject {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for JsonObject {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            use serde::de::Error as _;
            let _ = d;
            Err(D::Error::custom("presence objects need the std feature"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_compacted_and_bounded() {
        let o = JsonObject::parse(r#" { "name" : "Ana", "tags": [1, 2] } "#, 100).unwrap();
        assert_eq!(o.as_str(), r#"{"name":"Ana","tags":[1,2]}"#);
        assert_eq!(
            JsonObject::parse("[1]", 100),
            Err(InvalidObject::NotAnObject)
        );
        assert_eq!(
            JsonObject::parse("\"x\"", 100),
            Err(InvalidObject::NotAnObject)
        );
        assert_eq!(JsonObject::parse("{", 100), Err(InvalidObject::NotAnObject));
        let deep = format!(
            "{}{}",
            r#"{"a":"#.repeat(9),
            "1}".to_owned() + &"}".repeat(8)
        );
        assert_eq!(JsonObject::parse(&deep, 1000), Err(InvalidObject::TooDeep));
        let ok = format!(
            "{}{}",
            r#"{"a":"#.repeat(7),
            "1}".to_owned() + &"}".repeat(6)
        );
        assert!(JsonObject::parse(&ok, 1000).is_ok());
        let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(100));
        assert_eq!(JsonObject::parse(&big, 100), Err(InvalidObject::TooLarge));
    }

    #[test]
    fn serde_writes_the_object_as_it_is_and_reads_it_back() {
        let o = JsonObject::parse(r#"{"a":"é\"\n","b":null}"#, 100).unwrap();
        let text = serde_json::to_string(&o).unwrap();
        assert_eq!(text, o.as_str());
        let back: JsonObject = serde_json::from_str(&text).unwrap();
        assert_eq!(back, o);
        assert!(serde_json::from_str::<JsonObject>("[1]").is_err());
    }
}
