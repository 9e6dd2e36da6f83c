//! Who may see whom: the social-graph hook.

use presence_core::{RoomId, UserId};

/// Decides which rooms a user may join and which users they may watch. Room
/// members see each other, so `may_join` is also "may see this room's
/// members". Called on every `join` and `watch`, and by the HTTP API.
///
/// Calls happen on the connection's task, outside any lock, and must not
/// block for long: cache anything that needs I/O.
pub trait AudiencePolicy: Send + Sync + 'static {
    /// Whether `user` may join `room`.
    fn may_join(&self, user: &UserId, room: &RoomId) -> bool;
    /// Whether `watcher` may see `target`'s presence everywhere.
    fn may_watch(&self, watcher: &UserId, target: &UserId) -> bool;
}

/// Any user may join any room and watch anyone. The default; fine for demos
/// and for apps where presence is public.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAudience;

impl AudiencePolicy for OpenAudience {
    fn may_join(&self, _user: &UserId, _room: &RoomId) -> bool {
        true
    }
    fn may_watch(&self, _watcher: &UserId, _target: &UserId) -> bool {
        true
    }
}
