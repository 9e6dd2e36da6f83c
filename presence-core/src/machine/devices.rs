//! Each connection as a device: its kind, the room its page shows, and how
//! long since its last input, for deciding where a notification goes
//! ([`crate::notify`]). Backends see these; other users never do.

use core::time::Duration;

use super::*;
use crate::notify::Device;
use crate::presence::IdleReason;

impl Machine {
    /// The connection runs on this kind of device (its `hello` said so).
    pub fn set_device(&mut self, conn: ConnId, kind: DeviceKind) -> Result<(), MachineError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(MachineError::UnknownConnection)?;
        c.device = kind;
        Ok(())
    }

    /// The connection's page shows `room` (one it joined), or none.
    pub fn set_view(
        &mut self,
        now: Millis,
        conn: ConnId,
        room: Option<RoomId>,
    ) -> Result<(), MachineError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(MachineError::UnknownConnection)?;
        if room.as_ref().is_some_and(|r| !c.rooms.contains(r)) {
            return Err(MachineError::NotInRoom);
        }
        if c.view == room {
            return Ok(());
        }
        c.view = room;
        let ev = self.view_event(now, conn);
        self.events.extend(ev);
        Ok(())
    }

    /// The `viewing` event of `conn` as it is now, if the host asked for
    /// them. Whoever the user is, invisible too: it reaches no room and no
    /// watcher (`rooms` empty, not `global`), only the host, which sees
    /// through invisibility anyway (`notify`). A connection in its grace
    /// keeps its view, as it keeps its rooms: a resume is no news; one
    /// removed shows none ([`Machine::view_gone`]).
    fn view_event(&self, now: Millis, conn: ConnId) -> Option<Event> {
        let c = self.conns.get(&conn).filter(|_| self.view_events)?;
        Some(Event {
            at: now,
            diff: Diff::Viewing {
                user: c.user.clone(),
                node: None,
                conn,
                device: c.device,
                room: c.view.clone(),
            },
            rooms: Vec::new(),
            global: false,
        })
    }

    /// `conn`, being removed, showed a room: it shows none now, so a host
    /// following views is not left with a stale one. Call before removing.
    pub(super) fn view_gone(&mut self, now: Millis, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn)
            && c.view.take().is_some()
        {
            let ev = self.view_event(now, conn);
            self.events.extend(ev);
        }
    }

    /// The user's live connections as devices, in connection order. A
    /// connection in its grace has no socket: it is no device anyone uses.
    /// `quiet` is the time since its last input as far as its reports tell:
    /// none while active; an idle `no_input` report came `idle_after` after
    /// the last input.
    pub fn devices(&self, now: Millis, user: &UserId) -> Vec<Device> {
        let Some(u) = self.users.get(user) else {
            return Vec::new();
        };
        let mut out: Vec<Device> = u
            .conns
            .iter()
            .filter_map(|id| self.conns.get(id).map(|c| (*id, c)))
            .filter(|(_, c)| matches!(c.link, Link::Live { .. }))
            .map(|(conn, c)| {
                let quiet = match c.activity {
                    Activity::Active => Duration::ZERO,
                    Activity::Idle(IdleReason::NoInput) => {
                        now.since(c.since).saturating_add(self.policy.idle_after)
                    }
                    Activity::Idle(_) => now.since(c.since),
                };
                Device {
                    conn,
                    kind: c.device,
                    activity: c.activity,
                    view: c.view.clone(),
                    quiet_ms: u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX),
                }
            })
            .collect();
        out.sort_unstable_by_key(|d| d.conn);
        out
    }

    /// How far the user has read `room`, if they said.
    pub fn marker(&self, user: &UserId, room: &RoomId) -> Option<u64> {
        self.users.get(user)?.receipts.get(room).copied()
    }
}
