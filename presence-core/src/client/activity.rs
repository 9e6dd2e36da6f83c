//! What the page is doing, from raw signals, as one `Activity`.

use core::time::Duration;

use crate::presence::{Activity, IdleReason, Millis};

/// Delays that turn page signals into idleness.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ActivityConfig {
    /// No input for this long → idle (`no_input`). The server's
    /// `welcome.idle_after_ms` replaces it unless the app set its own.
    pub idle_after: Duration,
    /// Hidden for this long → idle (`hidden`). Short, but not zero, so a
    /// quick tab switch does not flap.
    pub hidden_after: Duration,
    /// Window blurred for this long → idle (`blurred`).
    pub blurred_after: Duration,
}

impl Default for ActivityConfig {
    fn default() -> Self {
        Self {
            idle_after: Duration::from_secs(60),
            hidden_after: Duration::from_secs(5),
            blurred_after: Duration::from_secs(30),
        }
    }
}

/// Raw page signals. Input events only move a timestamp, so a user who keeps
/// typing or moving costs nothing beyond this.
#[derive(Clone, Debug)]
pub struct ActivityTracker {
    config: ActivityConfig,
    last_input: Millis,
    hidden_since: Option<Millis>,
    blurred_since: Option<Millis>,
    locked: bool,
}

impl ActivityTracker {
    /// A visible, focused page that just had input.
    pub fn new(now: Millis, config: ActivityConfig) -> Self {
        Self {
            config,
            last_input: now,
            hidden_since: None,
            blurred_since: None,
            locked: false,
        }
    }

    /// Replaces the delays (e.g. with the server's idle-after).
    pub fn set_config(&mut self, config: ActivityConfig) {
        self.config = config;
    }

    /// The delays in force.
    pub fn config(&self) -> ActivityConfig {
        self.config
    }

    /// A key, pointer, wheel, touch or scroll event.
    pub fn input(&mut self, now: Millis) {
        self.last_input = self.last_input.max(now);
    }

    /// The page became hidden or visible.
    pub fn set_hidden(&mut self, now: Millis, hidden: bool) {
        match (hidden, self.hidden_since) {
            (true, None) => self.hidden_since = Some(now),
            (false, Some(_)) => {
                self.hidden_since = None;
                self.input(now);
            }
            _ => {}
        }
    }

    /// The window gained or lost focus.
    pub fn set_focused(&mut self, now: Millis, focused: bool) {
        match (focused, self.blurred_since) {
            (false, None) => self.blurred_since = Some(now),
            (true, Some(_)) => {
                self.blurred_since = None;
                self.input(now);
            }
            _ => {}
        }
    }

    /// The screen was locked or unlocked (Idle Detection API, where granted).
    pub fn set_locked(&mut self, now: Millis, locked: bool) {
        if self.locked && !locked {
            self.input(now);
        }
        self.locked = locked;
    }

    /// The activity at `now`, most telling reason first.
    pub fn activity(&self, now: Millis) -> Activity {
        let c = &self.config;
        let past = |since: Option<Millis>, d: Duration| since.is_some_and(|s| now >= s.after(d));
        if self.locked {
            Activity::Idle(IdleReason::Locked)
        } else if past(self.hidden_since, c.hidden_after) {
            Activity::Idle(IdleReason::Hidden)
        } else if past(self.blurred_since, c.blurred_after) {
            Activity::Idle(IdleReason::Blurred)
        } else if now >= self.last_input.after(c.idle_after) {
            Activity::Idle(IdleReason::NoInput)
        } else {
            Activity::Active
        }
    }

    /// The next time `activity` may change without a new signal.
    pub fn next_change(&self, now: Millis) -> Option<Millis> {
        let c = &self.config;
        [
            Some(self.last_input.after(c.idle_after)),
            self.hidden_since.map(|s| s.after(c.hidden_after)),
            self.blurred_since.map(|s| s.after(c.blurred_after)),
        ]
        .into_iter()
        .flatten()
        .filter(|&t| t > now)
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Millis {
        Millis(n * 1000)
    }

    #[test]
    fn no_input_makes_idle_and_input_makes_active() {
        let mut t = ActivityTracker::new(s(0), ActivityConfig::default());
        assert_eq!(t.activity(s(59)), Activity::Active);
        assert_eq!(t.next_change(s(59)), Some(s(60)));
        assert_eq!(t.activity(s(60)), Activity::Idle(IdleReason::NoInput));
        t.input(s(61));
        assert_eq!(t.activity(s(61)), Activity::Active);
    }

    #[test]
    fn hidden_and_blurred_take_their_delays_and_rank_above_no_input() {
        let mut t = ActivityTracker::new(s(0), ActivityConfig::default());
        t.set_focused(s(1), false);
        assert_eq!(t.activity(s(30)), Activity::Active);
        assert_eq!(t.activity(s(31)), Activity::Idle(IdleReason::Blurred));
        t.set_hidden(s(40), true);
        assert_eq!(t.activity(s(44)), Activity::Idle(IdleReason::Blurred));
        assert_eq!(t.activity(s(45)), Activity::Idle(IdleReason::Hidden));
        assert_eq!(t.activity(s(200)), Activity::Idle(IdleReason::Hidden));
        t.set_hidden(s(201), false);
        t.set_focused(s(201), true);
        assert_eq!(
            t.activity(s(201)),
            Activity::Active,
            "coming back counts as input"
        );
        t.set_locked(s(202), true);
        assert_eq!(t.activity(s(202)), Activity::Idle(IdleReason::Locked));
    }

    #[test]
    fn a_quick_tab_switch_does_not_go_idle() {
        let mut t = ActivityTracker::new(s(0), ActivityConfig::default());
        t.set_hidden(s(10), true);
        t.set_hidden(s(12), false);
        assert_eq!(t.activity(s(16)), Activity::Active);
    }
}
