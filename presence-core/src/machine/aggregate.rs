//! The merge rule: many connections, one user.

use crate::ids::UserId;
use crate::object::JsonObject;
use crate::presence::{
    Activity, IdleReason, Millis, PresenceState, PresenceView, Status, StatusText,
};

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

/// What observers see of a user, from what is shown and the user's own
/// state: an invisible user reads offline with status `available` and no
/// text; last active only while online, last seen only while offline. One
/// definition for the machine and the cluster ([`crate::cluster`]).
pub fn render(
    user: &UserId,
    shown: Shown,
    status: Status,
    text: Option<&StatusText>,
    (last_active, last_seen): (Option<Millis>, Option<Millis>),
    custom: &Custom,
) -> PresenceView {
    let invisible = status == Status::Invisible;
    let online = shown != Shown::Offline;
    // Online views only: an invisible user shows as offline, and leaks
    // nothing through these either.
    let shown_custom = |o: &Option<JsonObject>| o.clone().filter(|_| online && !invisible);
    PresenceView {
        user: user.clone(),
        state: shown.state(),
        reason: shown.reason(),
        status: if invisible { Status::Available } else { status },
        text: if invisible { None } else { text.cloned() },
        last_active: if online { last_active } else { None },
        last_seen: if online { None } else { last_seen },
        info: shown_custom(&custom.info),
        data: shown_custom(&custom.data),
    }
}

/// A user's app-defined fields and when each was set, for the cluster's
/// latest-setting-wins merge.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Custom {
    /// From the token of the user's latest connection.
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub info: Option<JsonObject>,
    /// When that connection came (0: never).
    #[serde(rename = "ia", default)]
    pub info_at: Millis,
    /// What a client of the user last set.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub data: Option<JsonObject>,
    /// When (0: never).
    #[serde(rename = "da", default)]
    pub data_at: Millis,
}

impl Custom {
    /// Nothing set, ever.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
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
