//! Which incarnations this node counts as live: what the lease rounds said,
//! the deaths they judged, and this node's own earlier incarnations. The
//! replica asks it of every record it merges.

use std::collections::{HashMap, HashSet};

use presence_core::Millis;
use presence_core::cluster::Liveness;

use crate::backend::Incarnation;

#[derive(Default)]
pub(super) struct Lives {
    /// Incarnations the last lease round found alive.
    live: HashSet<Incarnation>,
    /// Incarnations found dead, since when.
    gone: HashMap<Incarnation, Millis>,
    /// Incarnations the last lease round judged dead, since when: their
    /// records read as offline at once wherever they come from (an HTTP
    /// query of a node's users this node never followed), not only once a
    /// cleaner reaches each user, one round trip per user (44 s for 100,000:
    /// BENCHMARKS.md, "A node of 100,000 users killed").
    judged: HashMap<Incarnation, Millis>,
    /// This node's own earlier incarnations, left after a lapsed lease: dead
    /// whatever a lease round says (their lease may linger until ended).
    retired: HashSet<Incarnation>,
    /// When each incarnation's first record arrived: one is only judged dead
    /// by a lease round that started after it.
    first_seen: HashMap<Incarnation, Millis>,
}

impl Lives {
    /// How `inc` counts here; `me`, this node's incarnation, never reads as
    /// gone.
    pub fn of(&self, inc: &str, me: &str) -> Liveness {
        match self.gone.get(inc).or_else(|| self.judged.get(inc)) {
            Some(at) if inc != me => Liveness::Gone(*at),
            _ => Liveness::Live,
        }
    }

    /// Whether an incarnation of `node` holds a live lease.
    pub fn node_alive(&self, node: &str) -> bool {
        self.live
            .iter()
            .any(|inc| crate::cluster_config::node_of(inc) == node)
    }

    pub fn is_retired(&self, inc: &str) -> bool {
        self.retired.contains(inc)
    }

    /// A record of `inc` arrived.
    pub fn seen(&mut self, inc: &Incarnation, now: Millis) {
        self.first_seen.entry(inc.clone()).or_insert(now);
    }

    /// A lease round that started at `started` found `live` alive and
    /// judged `dead` dead; returns the incarnations whose liveness flipped
    /// here. One seen only after the round started is not judged by it.
    pub fn round(
        &mut self,
        me: &str,
        live: Vec<Incarnation>,
        dead: &[Incarnation],
        started: Millis,
        may_judge: impl Fn(&str) -> bool,
        now: Millis,
    ) -> HashSet<Incarnation> {
        self.judged = dead
            .iter()
            .map(|inc| (inc.clone(), self.judged.get(inc).copied().unwrap_or(now)))
            .collect();
        let live: HashSet<Incarnation> = live.into_iter().collect();
        let mut flipped = HashSet::new();
        for (inc, seen) in &self.first_seen {
            let dead = inc != me && !live.contains(inc) && *seen < started && may_judge(inc);
            match (dead, self.gone.contains_key(inc)) {
                (true, false) => {
                    self.gone.insert(inc.clone(), now);
                    flipped.insert(inc.clone());
                }
                (false, true) if live.contains(inc) && !self.retired.contains(inc) => {
                    self.gone.remove(inc);
                    flipped.insert(inc.clone());
                }
                _ => {}
            }
        }
        self.live = live;
        flipped
    }

    /// `inc`, an earlier incarnation of this node, is dead whatever a lease
    /// round says.
    pub fn retire(&mut self, inc: &Incarnation, now: Millis) {
        self.first_seen.insert(inc.clone(), now);
        self.gone.insert(inc.clone(), now);
        self.retired.insert(inc.clone());
    }

    /// Forgets incarnations neither live nor holding a record here
    /// (`has_records`).
    pub fn retain(&mut self, has_records: impl Fn(&Incarnation) -> bool) {
        let live = &self.live;
        self.first_seen
            .retain(|inc, _| live.contains(inc) || has_records(inc));
        let first_seen = &self.first_seen;
        self.gone.retain(|inc, _| first_seen.contains_key(inc));
        self.retired.retain(|inc| first_seen.contains_key(inc));
    }
}
