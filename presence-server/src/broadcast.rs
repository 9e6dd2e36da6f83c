//! Batching: changes that happen within the batch window are coalesced per
//! audience into one `diffs` frame, encoded once, and the same bytes are
//! handed to every recipient.

use std::collections::HashMap;

use presence_core::protocol::Diff;
use presence_core::{Event, RoomId, UserId};

/// Who a batch is for.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Audience {
    /// The members of a room: a `diffs` frame with `room` set.
    Room(RoomId),
    /// The connections watching a user: a `diffs` frame without `room`.
    Watchers(UserId),
}

/// Diffs waiting for the end of the window, per audience, in arrival order.
#[derive(Default, Debug)]
pub(crate) struct Batch {
    order: Vec<(Audience, Vec<Diff>)>,
    index: HashMap<Audience, usize>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn push(&mut self, to: Audience, diff: Diff) {
        match self.index.get(&to) {
            Some(&i) => {
                if let Some((_, diffs)) = self.order.get_mut(i) {
                    diffs.push(diff);
                }
            }
            None => {
                self.index.insert(to.clone(), self.order.len());
                self.order.push((to, vec![diff]));
            }
        }
    }

    /// Files one machine event under every audience that must hear of it.
    /// `watched` says whether anybody watches the event's user.
    pub fn route(&mut self, event: &Event, watched: bool) {
        for room in &event.rooms {
            self.push(Audience::Room(room.clone()), event.diff.clone());
        }
        if event.global && watched {
            self.push(
                Audience::Watchers(event.diff.user().clone()),
                event.diff.clone(),
            );
        }
    }

    /// Everything pending, oldest audience first; the batch is left empty.
    pub fn take(&mut self) -> Vec<(Audience, Vec<Diff>)> {
        self.index.clear();
        std::mem::take(&mut self.order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::Millis;

    fn ev(user: &str, rooms: &[&str], global: bool) -> Event {
        Event {
            at: Millis(1),
            diff: Diff::UserActive {
                user: UserId::new(user).expect("valid"),
            },
            rooms: rooms
                .iter()
                .map(|r| RoomId::new(*r).expect("valid"))
                .collect(),
            global,
        }
    }

    #[test]
    fn diffs_are_grouped_per_audience_in_arrival_order() {
        let mut b = Batch::default();
        b.route(&ev("ana", &["a", "b"], true), true);
        b.route(&ev("bob", &["a"], true), false);
        let out = b.take();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].0, Audience::Room(RoomId::new("a").expect("valid")));
        assert_eq!(out[0].1.len(), 2);
        assert_eq!(
            out[2].0,
            Audience::Watchers(UserId::new("ana").expect("valid"))
        );
        assert!(b.is_empty());
    }

    #[test]
    fn a_view_change_reaches_no_room_and_no_watcher() {
        let ana = UserId::new("ana").expect("valid");
        let view = Event {
            at: Millis(1),
            diff: Diff::Viewing {
                user: ana,
                node: None,
                conn: presence_core::ConnId(1),
                device: presence_core::DeviceKind::Desktop,
                room: Some(RoomId::new("a").expect("valid")),
            },
            rooms: Vec::new(),
            global: false,
        };
        let mut b = Batch::default();
        b.route(&view, true);
        assert!(b.is_empty());
    }
}
