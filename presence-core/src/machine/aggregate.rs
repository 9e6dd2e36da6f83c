//! The merge rule: many connections, one user.

use crate::presence::{Activity, IdleReason, PresenceState};

/// What observers are shown for a user. The machine remembers the last value
/// it announced and emits an event only when the newly computed one differs,
/// which is what makes it flap-free by construction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Shown {
    /// No visible connection.
    Offline,
    /// Connected, none active.
    Idle(IdleReason),
    /// At least one connection active.
    Active,
}

impl Shown {
    /// The state without the reason.
    pub fn state(self) -> PresenceState {
        match self {
            Shown::Offline => PresenceState::Offline,
            Shown::Idle(_) => PresenceState::Idle,
            Shown::Active => PresenceState::Active,
        }
    }

    /// The idle reason, if idle.
    pub fn reason(self) -> Option<IdleReason> {
        match self {
            Shown::Idle(r) => Some(r),
            _ => None,
        }
    }
}

/// How present an idle reason says the user is; lower is closer to the
/// screen. When every connection is idle, the user's reason is the most
/// present one: a visible tab without input says more than a hidden one.
fn rank(reason: IdleReason) -> u8 {
    match reason {
        IdleReason::NoInput => 0,
        IdleReason::Blurred => 1,
        IdleReason::Hidden => 2,
        IdleReason::Locked => 3,
    }
}

/// Merges connection activities: active if any is active, idle (with the most
/// present reason) if all are idle, offline if there are none. The result
/// does not depend on the order of the input.
pub fn aggregate(activities: impl IntoIterator<Item = Activity>) -> Shown {
    let mut best: Option<IdleReason> = None;
    for activity in activities {
        match activity {
            Activity::Active => return Shown::Active,
            Activity::Idle(r) => {
                if best.is_none_or(|b| rank(r) < rank(b)) {
                    best = Some(r);
                }
            }
        }
    }
    best.map_or(Shown::Offline, Shown::Idle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use IdleReason::*;

    #[test]
    fn any_active_connection_makes_the_user_active() {
        assert_eq!(
            aggregate([Activity::Idle(Hidden), Activity::Active]),
            Shown::Active
        );
        assert_eq!(aggregate([]), Shown::Offline);
    }

    #[test]
    fn all_idle_takes_the_most_present_reason() {
        assert_eq!(
            aggregate([
                Activity::Idle(Hidden),
                Activity::Idle(NoInput),
                Activity::Idle(Locked)
            ]),
            Shown::Idle(NoInput)
        );
        assert_eq!(
            aggregate([Activity::Idle(Locked), Activity::Idle(Blurred)]),
            Shown::Idle(Blurred)
        );
    }
}
