//! Deadlines, at most one per key, cheapest when deadlines move later.
//!
//! Heartbeats and typing refreshes push a deadline later on every frame; doing
//! that in a sorted set would cost a remove and an insert each time. Instead a
//! key keeps its earlier entry, and when that fires the machine looks at the
//! real deadline and schedules again. Only a deadline that moves *earlier*
//! (a clean leave) touches the set.

use std::collections::{BTreeSet, HashMap};

use crate::ids::{ConnId, RoomId, UserId};
use crate::presence::Millis;

/// What a deadline belongs to.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub(crate) enum TimerKey {
    /// A connection's heartbeat timeout or grace end.
    Conn(ConnId),
    /// A typing indicator's expiry.
    Typing(UserId, RoomId),
}

#[derive(Default, Debug)]
pub(crate) struct Timers {
    due: BTreeSet<(Millis, TimerKey)>,
    scheduled: HashMap<TimerKey, Millis>,
}

impl Timers {
    /// Makes sure `key` fires no later than `at`.
    pub(crate) fn ensure(&mut self, key: TimerKey, at: Millis) {
        match self.scheduled.get(&key) {
            Some(&current) if current <= at => {}
            Some(&current) => {
                self.due.remove(&(current, key.clone()));
                self.due.insert((at, key.clone()));
                self.scheduled.insert(key, at);
            }
            None => {
                self.due.insert((at, key.clone()));
                self.scheduled.insert(key, at);
            }
        }
    }

    pub(crate) fn cancel(&mut self, key: &TimerKey) {
        if let Some(at) = self.scheduled.remove(key) {
            self.due.remove(&(at, key.clone()));
        }
    }

    /// Removes and returns the earliest key due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Millis) -> Option<TimerKey> {
        let first = self.due.first()?;
        if first.0 > now {
            return None;
        }
        let (_, key) = self.due.pop_first()?;
        self.scheduled.remove(&key);
        Some(key)
    }

    pub(crate) fn next(&self) -> Option<Millis> {
        self.due.first().map(|(at, _)| *at)
    }

    pub(crate) fn len(&self) -> usize {
        self.scheduled.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_deadlines_are_lazy_earlier_ones_replace() {
        let mut t = Timers::default();
        let k = TimerKey::Conn(ConnId(1));
        t.ensure(k.clone(), Millis(100));
        t.ensure(k.clone(), Millis(500));
        assert_eq!(t.next(), Some(Millis(100)));
        t.ensure(k.clone(), Millis(50));
        assert_eq!(t.next(), Some(Millis(50)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.pop_due(Millis(49)), None);
        assert_eq!(t.pop_due(Millis(50)), Some(k));
        assert_eq!(t.next(), None);
    }

    #[test]
    fn cancel_removes_the_entry() {
        let mut t = Timers::default();
        let k = TimerKey::Conn(ConnId(1));
        t.ensure(k.clone(), Millis(10));
        t.cancel(&k);
        assert_eq!(t.pop_due(Millis(100)), None);
    }
}
