//! Privacy on every surface a user sees ([`presence_core::privacy`]): what
//! each recipient may see of others' last seen and read markers. Frames stay
//! encoded once per group of recipients who see alike; a batch with nothing
//! a setting could hide costs one scan of its diffs.

use presence_core::privacy::{LastSeen, Privacy, Receipts, Sight};
use presence_core::protocol::{Diff, ErrorCode, ServerMessage};
use presence_core::{ConnId, Millis, PresenceView, UserId};

use super::{Hub, Node, encoded};
use crate::auth::Identity;

/// Recipients who see alike: their sight of each subject, in order.
pub(super) type Group = (Vec<Sight>, Vec<ConnId>);

impl Hub {
    /// A user changed their settings from one of their sockets.
    pub fn set_own_privacy(
        &self,
        conn: ConnId,
        generation: u64,
        last_seen: Option<LastSeen>,
        receipts: Option<Receipts>,
    ) -> Result<(), ErrorCode> {
        self.step(|st, now| {
            let user = st
                .sockets
                .get(&conn)
                .filter(|s| s.generation == generation)
                .map(|s| s.user.clone())
                .ok_or(ErrorCode::Internal)?;
            st.change_privacy(now, &user, last_seen, receipts);
            Ok(())
        })
    }

    /// A backend changed a user's settings (connected or not); returns them.
    /// In a cluster, the settings the store holds (`cluster_privacy`) come
    /// first, so a change of one setting keeps the other as set elsewhere.
    pub async fn set_privacy(
        &self,
        user: &UserId,
        last_seen: Option<LastSeen>,
        receipts: Option<Receipts>,
    ) -> Privacy {
        let known = match self.cluster_records(user).await {
            Some(recs) => self.cluster_privacy(&recs),
            None => None,
        };
        self.step(|st, now| {
            if let Some((p, at)) = known
                && st.machine.adopt_privacy(now, user, p, at)
            {
                st.tell_privacy(user, p);
            }
            st.change_privacy(now, user, last_seen, receipts);
            st.machine.privacy(user)
        })
    }

    /// A user's settings, cluster-wide when the store answers.
    pub async fn privacy_anywhere(&self, user: &UserId) -> Privacy {
        match self.cluster_records(user).await {
            Some(recs) => self.cluster_privacy(&recs).map(|(p, _)| p),
            None => None,
        }
        .unwrap_or_else(|| self.privacy(user))
    }

    /// A user's settings as this node knows them.
    pub fn privacy(&self, user: &UserId) -> Privacy {
        let st = self.lock();
        st.privacy_of(user)
    }

    /// Views as `viewer` may see them (the HTTP API with a user token).
    pub(crate) fn as_seen_by(
        &self,
        viewer: &Identity,
        views: Vec<PresenceView>,
    ) -> Vec<PresenceView> {
        let st = self.lock();
        st.seen_by_identity(viewer, views)
    }

    /// Read markers as `viewer` may see them: none but their own while
    /// their receipts are off (others' hidden ones are never shown).
    pub(crate) fn receipts_seen_by<T>(
        &self,
        viewer: &Identity,
        receipts: Vec<T>,
        reader: impl Fn(&T) -> &UserId,
    ) -> Vec<T> {
        if self.privacy(&viewer.user).receipts == Receipts::On {
            return receipts;
        }
        receipts
            .into_iter()
            .filter(|r| *reader(r) == viewer.user)
            .collect()
    }
}

/// `subject`'s sight in a group's key.
pub(super) fn sight_of(subjects: &[UserId], sights: &[Sight], subject: &UserId) -> Sight {
    subjects
        .binary_search(subject)
        .ok()
        .and_then(|i| sights.get(i).copied())
        .unwrap_or(Sight::ALL)
}

/// `diffs` as a group sees them.
pub(super) fn diffs_seen(diffs: &[Diff], subjects: &[UserId], sights: &[Sight]) -> Vec<Diff> {
    diffs
        .iter()
        .filter_map(|d| sight_of(subjects, sights, d.user()).diff(d))
        .collect()
}

impl Node {
    fn change_privacy(
        &mut self,
        now: Millis,
        user: &UserId,
        last_seen: Option<LastSeen>,
        receipts: Option<Receipts>,
    ) {
        let changed = self.machine.set_privacy(now, user, last_seen, receipts);
        // Kept like the status; published even when unchanged, since the
        // cluster takes the latest setting.
        if self.on_disk {
            self.durable.insert(user.clone());
        }
        if self.cluster.is_some() {
            self.touched.insert(user.clone());
        }
        if let Some(p) = changed {
            self.tell_privacy(user, p);
        }
    }

    /// Tells the user's own sockets here their settings.
    pub(super) fn tell_privacy(&mut self, user: &UserId, p: Privacy) {
        let msg = encoded(&ServerMessage::SelfPrivacy {
            last_seen: p.last_seen,
            receipts: p.receipts,
        });
        for c in self.machine.connections_of(user).to_vec() {
            self.send(c, msg.clone());
        }
    }

    /// A user's settings: the cluster's view when it follows the user (the
    /// latest any node knew), else this node's.
    pub(super) fn privacy_of(&self, user: &UserId) -> Privacy {
        self.cluster
            .as_ref()
            .and_then(|c| c.view(user))
            .map_or_else(|| self.machine.privacy(user), |v| v.privacy)
    }

    /// What `viewer`, whose own settings are `own`, sees of `subject`.
    pub(super) fn sight(&self, viewer: &Identity, own: Privacy, subject: &UserId) -> Sight {
        self.sight_given(viewer, own, subject, self.privacy_of(subject))
    }

    /// [`Hub::sight`] with the subject's settings known (from fetched
    /// records, say): the audience policy decides who is a contact.
    pub(super) fn sight_given(
        &self,
        viewer: &Identity,
        own: Privacy,
        subject: &UserId,
        settings: Privacy,
    ) -> Sight {
        Sight::of(viewer.user == *subject, settings, own, || {
            self.audience.may_see_last_seen(viewer, subject)
        })
    }

    /// `recipients` grouped by what they see of `subjects`: one group
    /// with no sights when there is nothing to hide.
    pub(super) fn by_sight(&self, subjects: &[UserId], recipients: Vec<ConnId>) -> Vec<Group> {
        if subjects.is_empty() {
            return vec![(Vec::new(), recipients)];
        }
        let mut groups: Vec<Group> = Vec::new();
        for conn in recipients {
            let Some(s) = self.sockets.get(&conn) else {
                continue;
            };
            let own = self.privacy_of(&s.user);
            let key: Vec<Sight> = subjects
                .iter()
                .map(|u| self.sight(&s.who, own, u))
                .collect();
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, conns)) => conns.push(conn),
                None => groups.push((key, vec![conn])),
            }
        }
        groups
    }

    /// The users of `diffs` whose settings could hide something from one of
    /// `recipients`: users going offline whose last seen is not for
    /// everyone, and readers with receipts off, or all readers when a
    /// recipient has receipts off. With nobody's settings in the way (the
    /// common case) none, so the batch is encoded once for all.
    pub(super) fn diff_subjects(&self, diffs: &[Diff], recipients: &[ConnId]) -> Vec<UserId> {
        let mut blind = None;
        let mut out = Vec::new();
        for d in diffs {
            let hides = match d {
                Diff::Read { user, .. } => {
                    self.privacy_of(user).receipts == Receipts::Off
                        || *blind.get_or_insert_with(|| self.any_blind(recipients))
                }
                Diff::UserDisconnected {
                    user,
                    last_seen: Some(_),
                } => self.privacy_of(user).last_seen != LastSeen::Everyone,
                _ => false,
            };
            if hides {
                out.push(d.user().clone());
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether one of `conns` has receipts off: it sees nobody's markers.
    pub(super) fn any_blind(&self, conns: &[ConnId]) -> bool {
        conns.iter().any(|c| {
            self.sockets
                .get(c)
                .is_some_and(|s| self.privacy_of(&s.user).receipts == Receipts::Off)
        })
    }

    /// The users of views whose last seen a setting could hide.
    pub(super) fn view_subjects<'a>(
        &self,
        views: impl IntoIterator<Item = &'a PresenceView>,
    ) -> Vec<UserId> {
        let mut out: Vec<UserId> = views
            .into_iter()
            .filter(|v| {
                v.last_seen.is_some() && self.privacy_of(&v.user).last_seen != LastSeen::Everyone
            })
            .map(|v| v.user.clone())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Views as the socket `conn` may see them.
    pub(super) fn seen_by(&self, conn: ConnId, views: Vec<PresenceView>) -> Vec<PresenceView> {
        let Some(s) = self.sockets.get(&conn) else {
            return views;
        };
        self.seen_by_identity(&s.who, views)
    }

    fn seen_by_identity(&self, viewer: &Identity, views: Vec<PresenceView>) -> Vec<PresenceView> {
        let own = self.privacy_of(&viewer.user);
        views
            .into_iter()
            .map(|v| {
                let sight = self.sight(viewer, own, &v.user);
                sight.view(v)
            })
            .collect()
    }
}
