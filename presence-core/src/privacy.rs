//! Privacy settings: who sees a user's last seen and read markers, as
//! messaging apps let users choose. The rule is [`Sight::of`]; servers
//! apply it on every surface a user sees (host apps and service keys see
//! everything).

use serde::{Deserialize, Serialize};

use crate::presence::PresenceView;
use crate::protocol::Diff;

/// Who sees when the user was last seen.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LastSeen {
    /// Whoever sees the user's presence (the default).
    #[default]
    Everyone,
    /// Only the user's contacts: the server's audience policy decides who
    /// they are (for the binary, the viewer's token `watch` claim).
    Contacts,
    /// Nobody.
    Nobody,
}

impl LastSeen {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LastSeen::Everyone => "everyone",
            LastSeen::Contacts => "contacts",
            LastSeen::Nobody => "nobody",
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "everyone" => LastSeen::Everyone,
            "contacts" => LastSeen::Contacts,
            "nobody" => LastSeen::Nobody,
            _ => return None,
        })
    }
}

/// Whether the user's read markers are shown.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Receipts {
    /// Shown to those who see the room (the default).
    #[default]
    On,
    /// Kept for the user, shown to nobody; and, as in messaging apps, the
    /// user then sees nobody's.
    Off,
}

impl Receipts {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Receipts::On => "on",
            Receipts::Off => "off",
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "on" => Receipts::On,
            "off" => Receipts::Off,
            _ => return None,
        })
    }
}

/// One user's settings. Both default to the open choice.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub struct Privacy {
    /// Who sees the last seen.
    #[serde(default)]
    pub last_seen: LastSeen,
    /// Read receipts on or off.
    #[serde(default)]
    pub receipts: Receipts,
}

impl Privacy {
    /// Both settings open: nothing to hide from anyone.
    pub fn is_open(&self) -> bool {
        *self == Privacy::default()
    }

    /// These settings with the given ones changed (absent: kept).
    pub fn with(self, last_seen: Option<LastSeen>, receipts: Option<Receipts>) -> Self {
        Privacy {
            last_seen: last_seen.unwrap_or(self.last_seen),
            receipts: receipts.unwrap_or(self.receipts),
        }
    }
}

/// What one viewer may see of one subject.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Sight {
    /// The subject's last seen.
    pub last_seen: bool,
    /// The subject's shown markers (snapshots, the HTTP API): those it read
    /// while its receipts were on.
    pub receipts: bool,
    /// The subject's new markers as they move (`read` diffs).
    pub reads: bool,
}

impl Sight {
    /// Everything: a user of themselves, a host app or a service key.
    pub const ALL: Sight = Sight {
        last_seen: true,
        receipts: true,
        reads: true,
    };

    /// The rule. A user sees all of themselves. Others see the subject's
    /// last seen as its setting says (`contacts`: when `contact()` says the
    /// viewer is one, asked only then); its shown markers while the viewer
    /// has receipts on, and its new ones when both have them on (a marker
    /// read with receipts off is never shown, so a room's shown markers
    /// only ever hold ones read with them on).
    pub fn of(
        itself: bool,
        subject: Privacy,
        viewer: Privacy,
        contact: impl FnOnce() -> bool,
    ) -> Sight {
        if itself {
            return Sight::ALL;
        }
        Sight {
            last_seen: match subject.last_seen {
                LastSeen::Everyone => true,
                LastSeen::Contacts => contact(),
                LastSeen::Nobody => false,
            },
            receipts: viewer.receipts == Receipts::On,
            reads: subject.receipts == Receipts::On && viewer.receipts == Receipts::On,
        }
    }

    /// `view` as this viewer sees it: without a hidden last seen.
    pub fn view(self, mut view: PresenceView) -> PresenceView {
        if !self.last_seen {
            view.last_seen = None;
        }
        view
    }

    /// `diff` as this viewer sees it: without a hidden last seen, and
    /// nothing for a hidden marker.
    pub fn diff(self, diff: &Diff) -> Option<Diff> {
        match diff {
            Diff::Read { .. } if !self.reads => None,
            Diff::UserDisconnected { user, .. } if !self.last_seen => {
                Some(Diff::UserDisconnected {
                    user: user.clone(),
                    last_seen: None,
                })
            }
            d => Some(d.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;
    use crate::presence::Millis;

    fn p(last_seen: LastSeen, receipts: Receipts) -> Privacy {
        Privacy {
            last_seen,
            receipts,
        }
    }

    #[test]
    fn the_rule_covers_each_setting_and_asks_about_contacts_only_when_needed() {
        let open = Privacy::default();
        let never = || -> bool { panic!("asked about contacts") };
        assert_eq!(Sight::of(false, open, open, never), Sight::ALL);
        for (setting, contact, shown) in [
            (LastSeen::Contacts, true, true),
            (LastSeen::Contacts, false, false),
        ] {
            let s = Sight::of(false, p(setting, Receipts::On), open, || contact);
            assert_eq!(s.last_seen, shown);
        }
        let nobody = Sight::of(false, p(LastSeen::Nobody, Receipts::On), open, never);
        assert!(!nobody.last_seen && nobody.receipts && nobody.reads);
        // Receipts off hides the subject's new markers (its earlier ones stay
        // shown), and the viewer's own choice hides everybody's from it.
        let off = Sight::of(false, p(LastSeen::Everyone, Receipts::Off), open, never);
        assert!(off.receipts && !off.reads);
        let blind = Sight::of(false, open, p(LastSeen::Everyone, Receipts::Off), never);
        assert!(!blind.receipts && !blind.reads);
        // A user sees all of themselves.
        let hidden = p(LastSeen::Nobody, Receipts::Off);
        assert_eq!(Sight::of(true, hidden, hidden, never), Sight::ALL);
    }

    #[test]
    fn a_hidden_last_seen_and_marker_leave_the_diff() {
        let ana = UserId::new("ana").unwrap();
        let blind = Sight {
            last_seen: false,
            receipts: false,
            reads: false,
        };
        let gone = Diff::UserDisconnected {
            user: ana.clone(),
            last_seen: Some(Millis(5)),
        };
        assert_eq!(
            blind.diff(&gone),
            Some(Diff::UserDisconnected {
                user: ana.clone(),
                last_seen: None
            })
        );
        assert_eq!(Sight::ALL.diff(&gone), Some(gone));
        let read = Diff::Read {
            user: ana,
            marker: 3,
        };
        assert_eq!(blind.diff(&read), None);
    }

    #[test]
    fn settings_read_partially_and_default_open() {
        let s: Privacy = serde_json::from_str(r#"{"receipts":"off"}"#).unwrap();
        assert_eq!(s, p(LastSeen::Everyone, Receipts::Off));
        assert!(serde_json::from_str::<Privacy>(r#"{"last_seen":"friends"}"#).is_err());
        assert!(Privacy::default().is_open());
        assert_eq!(
            s.with(Some(LastSeen::Nobody), None),
            p(LastSeen::Nobody, Receipts::Off)
        );
    }
}
