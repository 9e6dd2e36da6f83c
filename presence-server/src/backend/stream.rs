//! The cluster's event stream as a backend keeps it: every host event of
//! the cluster in one of `shards` append-only logs (on Redis, the streams
//! `P:{e:<k>}`, each in its own slot), each bounded by length and age.
//!
//! A user's events always go to the same shard ([`shard_of`]), so a shard
//! holds each of its users' events in the order they were appended. Ids are
//! Redis stream ids `<ms>-<n>`: the append time (never going back) and the
//! entry's number in its shard (1, 2, ...), so a reader tells from the
//! numbers alone whether retention took entries it had not read
//! ([`ShardRead::gap`]). An event's own id is in its JSON (see `Owed`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A position in one shard: a Redis stream id. `0-0` is before everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Milliseconds since the Unix epoch, as the engine's clock gave them.
    pub ms: u64,
    /// Order within one millisecond.
    pub seq: u64,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').ok_or(())?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(());
        }
        Ok(Self {
            ms: ms.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// One event to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Append {
    /// Its shard ([`shard_of`] its user; a `gap` goes to every shard).
    pub shard: u16,
    /// The event's kind (`user_connected`, ..., or `gap`).
    pub kind: String,
    /// The user it is about (empty for a `gap`).
    pub user: String,
    /// The event as JSON, without its `id` (the engine names it).
    pub data: String,
}

/// One appended event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// Its id in its shard.
    pub id: StreamId,
    /// As appended.
    pub kind: String,
    /// As appended.
    pub user: String,
    /// As appended.
    pub data: String,
}

/// What one read of a shard found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardRead {
    /// The shard.
    pub shard: u16,
    /// The greatest id ever appended (its `seq`: how many ever were).
    pub last: StreamId,
    /// Entries after the position asked, oldest first.
    pub entries: Vec<StreamEntry>,
}

impl ShardRead {
    /// Whether a reader at `pos` missed entries: the first entry after it
    /// is not the next number, or none is left though more were appended,
    /// or `pos` is beyond anything appended (the engine lost the stream).
    pub fn gap(&self, pos: StreamId) -> bool {
        if pos.seq > self.last.seq {
            return true;
        }
        match self.entries.first() {
            Some(e) => e.id.seq > pos.seq + 1,
            None => self.last.seq > pos.seq,
        }
    }
}

/// How much each shard keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keep {
    /// Entries per shard, at least (Redis trims in whole blocks of about
    /// 100 entries, so a little more may stay).
    pub per_shard: usize,
    /// Entries older than this go.
    pub max_age: Duration,
}

/// The shard of a user's events: FNV-1a (32 bits) of the id's UTF-8 bytes,
/// modulo the number of shards. Documented, so a service reading the
/// streams directly knows where a user's events are.
pub fn shard_of(user: &str, shards: u16) -> u16 {
    (fnv1a32(user) % u32::from(shards.max(1))) as u16
}

/// FNV-1a, 32 bits, of a string's UTF-8 bytes.
pub(crate) fn fnv1a32(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_strictly_and_order_by_time_then_sequence() {
        let a: StreamId = "1700000000000-3".parse().expect("id");
        assert_eq!(a.to_string(), "1700000000000-3");
        assert!(a < "1700000000001-0".parse().expect("id"));
        for bad in ["", "1", "1-", "-1", "a-1", "1-2-3", "1 -2", "+1-2"] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shards_follow_fnv1a() {
        // FNV-1a 32 of "a" is 0xe40c292c.
        assert_eq!(shard_of("a", 1000), (0xe40c_292c_u32 % 1000) as u16);
        assert_eq!(shard_of("ana", 1), 0);
        assert!((0..200).all(|i| shard_of(&format!("u{i}"), 8) < 8));
    }
}
