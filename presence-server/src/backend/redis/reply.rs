//! Stored values and replies. Nothing Redis sends is trusted: a reply of the
//! wrong shape is a [`BackendError::Decode`], never a panic.
//!
//! Policy for one bad entry among many (a corrupted record field, a member
//! or marker that does not parse): that entry is skipped and logged with
//! `tracing::warn`, the rest is returned. A single bad value would otherwise
//! fail every call touching its user or room forever, since nothing but a
//! new write repairs it. The shape of the reply as a whole (a map where a
//! map is due, a string where a string is due) is checked strictly.

use presence_core::UserId;
use redis::Value;

use crate::backend::{BackendError, Incarnation, Owed, Stored, UserRecords};

/// Decoded fields of one user's hash beyond this many are skipped (one
/// field per incarnation that wrote the user: far fewer in any real cluster).
pub(super) const MAX_FIELDS: usize = 4096;

/// Shorthand for a decode error.
pub(super) fn bad(what: impl Into<String>) -> BackendError {
    BackendError::Decode(what.into())
}

/// A stored value: `h` if the record holds the user, else `o`; a space; the
/// JSON of [`Stored`]. Scripts read the first character, never the JSON.
pub(super) fn encode(stored: &Stored) -> Result<String, BackendError> {
    let json = serde_json::to_string(stored).map_err(|e| bad(format!("encoding a record: {e}")))?;
    let flag = if stored.record.holds() { 'h' } else { 'o' };
    Ok(format!("{flag} {json}"))
}

/// The inverse of [`encode`].
pub(super) fn decode(raw: &[u8]) -> Result<Stored, String> {
    let json = match raw {
        [b'h' | b'o', b' ', json @ ..] => json,
        _ => return Err("no holds flag".into()),
    };
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

/// The bytes of a string reply.
pub(super) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

/// A string reply, or nil.
pub(super) fn opt_bytes(v: &Value) -> Result<Option<&[u8]>, BackendError> {
    match v {
        Value::Nil => Ok(None),
        v => bytes(v)
            .map(Some)
            .ok_or_else(|| bad("expected a string or nil")),
    }
}

/// A UTF-8 string reply, or nil.
pub(super) fn opt_string(v: &Value) -> Result<Option<String>, BackendError> {
    opt_bytes(v)?
        .map(|b| String::from_utf8(b.to_vec()).map_err(|_| bad("expected UTF-8")))
        .transpose()
}

/// The items of an array or set reply (nil: none).
pub(super) fn items(v: Value) -> Result<Vec<Value>, BackendError> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        _ => Err(bad("expected an array")),
    }
}

/// The pairs of a map reply (RESP3 `HGETALL`) or of a flat array (from a
/// script); an empty hash may come as nil.
pub(super) fn pairs(v: Value) -> Result<Vec<(Value, Value)>, BackendError> {
    match v {
        Value::Map(m) => Ok(m),
        Value::Array(a) if a.len() % 2 == 0 => {
            let mut it = a.into_iter();
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            Ok(out)
        }
        Value::Nil => Ok(Vec::new()),
        _ => Err(bad("expected a map")),
    }
}

/// A user's hash: incarnation → record, skipping (and logging) bad fields.
pub(super) fn user_records(user: &UserId, v: Value) -> Result<UserRecords, BackendError> {
    let pairs = pairs(v)?;
    let mut out = Vec::with_capacity(pairs.len().min(MAX_FIELDS));
    for (k, v) in pairs {
        if out.len() == MAX_FIELDS {
            tracing::warn!(%user, "backend: user hash has too many fields; the rest are skipped");
            break;
        }
        let Some(inc) = bytes(&k).and_then(|b| std::str::from_utf8(b).ok()) else {
            tracing::warn!(%user, "backend: skipping a record field that is not UTF-8");
            continue;
        };
        let inc = match Incarnation::parse(inc) {
            Ok(inc) => inc,
            Err(e) => {
                tracing::warn!(%user, "backend: skipping a record: {e}");
                continue;
            }
        };
        match bytes(&v)
            .ok_or_else(|| "not a string".to_owned())
            .and_then(decode)
        {
            Ok(stored) => out.push((inc, stored)),
            Err(e) => tracing::warn!(%user, %inc, "backend: skipping a corrupted record: {e}"),
        }
    }
    Ok(out)
}

/// A user's owed list (see `owe.lua`); an entry that does not decode is
/// skipped and logged (it is never settled, and goes with the list's bound).
pub(super) fn owed_list(user: &UserId, v: Value) -> Result<Vec<Owed>, BackendError> {
    let mut out = Vec::new();
    for item in items(v)? {
        let parsed = bytes(&item)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| "not UTF-8".to_owned())
            .and_then(owed_entry);
        match parsed {
            Ok(o) => out.push(o),
            Err(e) => {
                tracing::warn!(%user, "backend: skipping an owed change that does not decode: {e}")
            }
        }
    }
    Ok(out)
}

/// One entry of `owe.lua`: `<inc>:<seq>`, the old value, then field and
/// value lines.
fn owed_entry(text: &str) -> Result<Owed, String> {
    let mut lines = text.split('\n');
    let head = lines.next().unwrap_or_default();
    let (inc, seq) = head.rsplit_once(':').ok_or("no id")?;
    let seq = seq.parse().map_err(|_| "no sequence")?;
    let old = match lines.next().ok_or("no old value")? {
        "" => None,
        v => Some(decode(v.as_bytes())?),
    };
    let rest: Vec<&str> = lines.collect();
    if !rest.len().is_multiple_of(2) {
        return Err("a field without its value".into());
    }
    let all = rest
        .chunks(2)
        .take(MAX_FIELDS)
        .filter_map(|kv| {
            Some((
                Incarnation::parse(kv[0]).ok()?,
                decode(kv[1].as_bytes()).ok()?,
            ))
        })
        .collect();
    Ok(Owed {
        inc: Incarnation::parse(inc).map_err(|e| e.to_string())?,
        seq,
        old,
        all,
    })
}

/// An integer reply.
pub(super) fn int(v: &Value) -> Result<i64, BackendError> {
    match v {
        Value::Int(i) => Ok(*i),
        v => bytes(v)
            .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
            .ok_or_else(|| bad("expected an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::cluster::NodeRecord;
    use presence_core::{Millis, Status};

    #[test]
    fn owed_entries_decode_and_bad_ones_are_refused() {
        let stored = Stored {
            seq: 3,
            record: NodeRecord::released(Some(Millis(5)), Status::Busy, None, Millis(1)),
        };
        let v = encode(&stored).expect("encodes");
        let o = owed_entry(&format!("n1.ab:7\n{v}\nn1.ab\n{v}\nn2.cd\n{v}")).expect("decodes");
        assert_eq!(
            (o.inc.as_str(), o.seq, o.old.is_some(), o.all.len()),
            ("n1.ab", 7, true, 2)
        );
        let o = owed_entry(&format!("n1.ab:7\n\nn1.ab\n{v}")).expect("decodes");
        assert_eq!(o.old, None);
        for bad in ["", "n1.ab", "n1.ab:x\n", "n1.ab:7", "n1.ab:7\n\nn1.ab"] {
            assert!(owed_entry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stored_values_round_trip_with_their_flag() {
        let released = Stored {
            seq: 7,
            record: NodeRecord::released(Some(Millis(5)), Status::Available, None, Millis(0)),
        };
        let raw = encode(&released).expect("encodes");
        assert!(raw.starts_with("o {"));
        assert_eq!(decode(raw.as_bytes()), Ok(released));
        for bad in [&b""[..], b"h", b"x {}", b"h {", b"h {\"q\":1}", b"h{}"] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_fields_are_skipped_and_bad_shapes_refused() {
        let user = UserId::new("ana").expect("user");
        let good = encode(&Stored {
            seq: 1,
            record: NodeRecord::released(None, Status::Available, None, Millis(0)),
        })
        .expect("encodes");
        let v = Value::Map(vec![
            (
                Value::BulkString(b"a".to_vec()),
                Value::BulkString(good.into_bytes()),
            ),
            (
                Value::BulkString(b"b".to_vec()),
                Value::BulkString(b"garbage".to_vec()),
            ),
            (
                Value::BulkString(vec![0xff]),
                Value::BulkString(b"h {}".to_vec()),
            ),
            (Value::BulkString(b"c".to_vec()), Value::Int(3)),
        ]);
        let recs = user_records(&user, v).expect("decodes");
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].0, "a");
        assert!(user_records(&user, Value::Int(1)).is_err());
        assert!(user_records(&user, Value::Array(vec![Value::Nil])).is_err());
    }
}
