//! The timing policy: every delay the machine and its clients use.

use core::time::Duration;

use serde::{Deserialize, Serialize};

/// Timing policy. Every value is configurable; the defaults suit a chat app.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `heartbeat_interval` | 25 s | how often a client pings |
/// | `heartbeat_timeout` | 70 s | silence after which a connection is dead |
/// | `offline_grace` | 10 s | a dropped connection may come back within this, silently |
/// | `leave_grace` | 2 s | same after a clean "leaving" (a page reload) |
/// | `idle_after` | 60 s | no input for this long makes a client idle |
/// | `typing_ttl` | 6 s | typing stops by itself when not refreshed |
///
/// The heartbeat timeout is more than twice the interval so one lost ping
/// never kills a connection, and over a minute so Chrome's once-a-minute timer
/// throttling of background tabs cannot starve a live tab.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TimingPolicy {
    /// How often a client sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// How long a connection may stay silent before it counts as dropped.
    pub heartbeat_timeout: Duration,
    /// Grace after a dropped connection before observers see the user leave.
    pub offline_grace: Duration,
    /// Grace after a clean "leaving"; short, but long enough for a reload.
    pub leave_grace: Duration,
    /// Input-free time after which a client reports itself idle.
    pub idle_after: Duration,
    /// Typing indicator lifetime without a refresh.
    pub typing_ttl: Duration,
}

impl Default for TimingPolicy {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(70),
            offline_grace: Duration::from_secs(10),
            leave_grace: Duration::from_secs(2),
            idle_after: Duration::from_secs(60),
            typing_ttl: Duration::from_secs(6),
        }
    }
}

/// A timing policy that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPolicy {
    /// A duration that must be positive was zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The timeout would kill healthy connections.
    #[error("heartbeat_timeout ({timeout:?}) must be more than heartbeat_interval ({interval:?})")]
    TimeoutTooShort {
        /// The configured timeout.
        timeout: Duration,
        /// The configured interval.
        interval: Duration,
    },
    /// A clean leave would wait longer than a drop.
    #[error("leave_grace ({leave:?}) must not exceed offline_grace ({offline:?})")]
    LeaveGraceTooLong {
        /// The configured leave grace.
        leave: Duration,
        /// The configured offline grace.
        offline: Duration,
    },
}

impl TimingPolicy {
    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        for (name, d) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("idle_after", self.idle_after),
            ("typing_ttl", self.typing_ttl),
        ] {
            if d.is_zero() {
                return Err(InvalidPolicy::Zero(name));
            }
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(InvalidPolicy::TimeoutTooShort {
                timeout: self.heartbeat_timeout,
                interval: self.heartbeat_interval,
            });
        }
        if self.leave_grace > self.offline_grace {
            return Err(InvalidPolicy::LeaveGraceTooLong {
                leave: self.leave_grace,
                offline: self.offline_grace,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid() {
        assert_eq!(TimingPolicy::default().validate(), Ok(()));
    }

    #[test]
    fn contradictory_policies_are_refused() {
        let p = TimingPolicy {
            heartbeat_timeout: Duration::from_secs(25),
            ..TimingPolicy::default()
        };
        assert!(matches!(
            p.validate(),
            Err(InvalidPolicy::TimeoutTooShort { .. })
        ));
        let p = TimingPolicy {
            leave_grace: Duration::from_secs(11),
            ..TimingPolicy::default()
        };
        assert!(matches!(
            p.validate(),
            Err(InvalidPolicy::LeaveGraceTooLong { .. })
        ));
        let p = TimingPolicy {
            typing_ttl: Duration::ZERO,
            ..TimingPolicy::default()
        };
        assert_eq!(p.validate(), Err(InvalidPolicy::Zero("typing_ttl")));
    }
}
