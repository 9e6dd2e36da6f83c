//! Every key and channel name. Each is hash-tagged (`{...}`) so that every
//! call touches one slot of a Redis Cluster: a user's records, a room's
//! members, a room's markers, an incarnation's index, and the small registry
//! (`{reg}`: leases, node claims, saved connections) each live in one slot,
//! and the channel of a room or user hashes with that room's or user's keys.
//!
//! Ids hold no whitespace (see [`presence_core::UserId`]) but may hold braces:
//! Redis then hashes the text up to the first `}`, which is still the same for
//! every name built from one id, and a channel name is parsed back by
//! stripping the fixed prefix and suffix, never by searching for braces.

use presence_core::{RoomId, UserId};

use crate::backend::Topic;

/// The names under one prefix.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` must already be valid ([`valid_prefix`]).
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix every name starts with.
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash `P:{u:<user>}`: incarnation → stored record.
    pub(super) fn user(&self, user: &UserId) -> String {
        format!("{}:{{u:{user}}}", self.prefix)
    }

    /// List `P:{u:<user>}:o`: the user's changes owed to the event stream.
    pub(super) fn owed(&self, user: &UserId) -> String {
        format!("{}:{{u:{user}}}:o", self.prefix)
    }

    /// String `P:{u:<user>}:rv`: unix seconds before which the user's
    /// tokens are refused (with the revocation's TTL).
    pub(super) fn revoked(&self, user: &UserId) -> String {
        format!("{}:{{u:{user}}}:rv", self.prefix)
    }

    /// Set `P:{i:<inc>}:users`: the users whose record of `inc` holds them.
    pub(super) fn index(&self, inc: &str) -> String {
        format!("{}:{{i:{inc}}}:users", self.prefix)
    }

    /// Set `P:{r:<room>}:m` of `"<user> <inc>"`.
    pub(super) fn members(&self, room: &RoomId) -> String {
        format!("{}:{{r:{room}}}:m", self.prefix)
    }

    /// Hash `P:{r:<room>}:rc`: user → decimal read marker.
    pub(super) fn markers(&self, room: &RoomId) -> String {
        format!("{}:{{r:{room}}}:rc", self.prefix)
    }

    /// Set `P:{reg}:incs`: the registered incarnations.
    pub(super) fn registry(&self) -> String {
        format!("{}:{{reg}}:incs", self.prefix)
    }

    /// String `P:{reg}:lease:<inc>` = "1", with the lease's TTL.
    pub(super) fn lease(&self, inc: &str) -> String {
        format!("{}:{{reg}}:lease:{inc}", self.prefix)
    }

    /// String `P:{reg}:node:<node>`: the node's current incarnation.
    pub(super) fn node(&self, node: &str) -> String {
        format!("{}:{{reg}}:node:{node}", self.prefix)
    }

    /// String `P:{reg}:resume:<node>`: connections saved for the next run.
    pub(super) fn resume(&self, node: &str) -> String {
        format!("{}:{{reg}}:resume:{node}", self.prefix)
    }

    /// Stream `P:{e:<shard>}`: one shard of the cluster's event stream.
    pub(super) fn stream(&self, shard: u16) -> String {
        format!("{}:{{e:{shard}}}", self.prefix)
    }

    /// String `P:{e:<shard>}:n`: the last id the shard gave (`<ms>-<n>`).
    pub(super) fn stream_last(&self, shard: u16) -> String {
        format!("{}:{{e:{shard}}}:n", self.prefix)
    }

    /// String `P:{w:<role>}:h`: who holds a role (with the hold's TTL).
    pub(super) fn role_holder(&self, role: &str) -> String {
        format!("{}:{{w:{role}}}:h", self.prefix)
    }

    /// String `P:{w:<role>}:s`: a role's saved state.
    pub(super) fn role_state(&self, role: &str) -> String {
        format!("{}:{{w:{role}}}:s", self.prefix)
    }

    /// The sharded channel of a topic: `P:{r:<room>}`, `P:{u:<user>}` or
    /// `P:{n:<node>}`.
    pub(super) fn channel(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(r) => format!("{}:{{r:{r}}}", self.prefix),
            Topic::User(u) => format!("{}:{{u:{u}}}", self.prefix),
            Topic::Node(n) => format!("{}:{{n:{n}}}", self.prefix),
        }
    }

    /// The topic of a channel name, if it is one of ours.
    pub(super) fn topic(&self, channel: &[u8]) -> Option<Topic> {
        let rest = std::str::from_utf8(channel)
            .ok()?
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix('}')?;
        if let Some(room) = rest.strip_prefix("r:") {
            RoomId::new(room).ok().map(Topic::Room)
        } else if let Some(user) = rest.strip_prefix("u:") {
            UserId::new(user).ok().map(Topic::User)
        } else if let Some(node) = rest.strip_prefix("n:") {
            crate::cluster_config::valid_node_id(node).then(|| Topic::Node(node.to_owned()))
        } else {
            None
        }
    }
}

/// A prefix is non-empty and holds no whitespace, control character or
/// brace (a brace would move every hash tag).
pub(super) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && !prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_back_to_their_topics() {
        let k = Keys::new("p:x");
        for t in [
            Topic::Room(RoomId::new("lobby").expect("room")),
            Topic::Room(RoomId::new("a}b{c}").expect("room")),
            Topic::User(UserId::new("}ana").expect("user")),
            Topic::Node("node-1".into()),
        ] {
            assert_eq!(k.topic(k.channel(&t).as_bytes()), Some(t));
        }
        for bad in [
            &b"other:{r:lobby}"[..],
            b"p:x:{q:lobby}",
            b"p:x:{r:}",
            b"p:x:{r:a b}",
            b"p:x:{r:lobby",
            b"\xff",
        ] {
            assert_eq!(k.topic(bad), None);
        }
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(valid_prefix("presence"));
        assert!(valid_prefix("ptest:a:1"));
        for bad in ["", "a b", "a{b", "a}b", "a\nb"] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }
}
