//! Who may see whom: the social-graph hook.

use futures_util::future::BoxFuture;
use presence_core::{RoomId, UserId};

use crate::auth::Identity;

/// Decides which rooms a user may join and which users they may watch. Room
/// members see each other, so `may_join` is also "may see this room's
/// members". Asked on every `join` and `watch`, and by the HTTP API, after
/// the token's own [`Scope`](crate::Scope) allowed it.
///
/// Async, so it can ask the app's database; each answer is bounded by
/// [`ServerConfig::policy_timeout`](crate::ServerConfig::policy_timeout),
/// after which the frame is refused with `internal` (retryable) and the
/// timeout counted in `/metrics`. A socket's frames wait for the answer, so
/// they stay in order. For answers that need no I/O, implement
/// [`SyncAudience`] instead.
pub trait AudiencePolicy: Send + Sync + 'static {
    /// Whether `who` may join `room`.
    fn may_join<'a>(&'a self, who: &'a Identity, room: &'a RoomId) -> BoxFuture<'a, bool>;
    /// Whether `who` may see `target`'s presence everywhere.
    fn may_watch<'a>(&'a self, who: &'a Identity, target: &'a UserId) -> BoxFuture<'a, bool>;
    /// Whether `who` counts as `target`'s contact for a last seen shown to
    /// `contacts` only. Asked at fan-out, under the node's lock, for each
    /// recipient of such a last seen: it must answer at once, from what it
    /// holds. The default: `target` is in `who`'s token `watch` claim.
    fn may_see_last_seen(&self, who: &Identity, target: &UserId) -> bool {
        who.watch.allows(target.as_str())
    }
}

/// An [`AudiencePolicy`] that answers at once, from what it holds.
pub trait SyncAudience: Send + Sync + 'static {
    /// Whether `who` may join `room`.
    fn may_join(&self, who: &Identity, room: &RoomId) -> bool;
    /// Whether `who` may see `target`'s presence everywhere.
    fn may_watch(&self, who: &Identity, target: &UserId) -> bool;
    /// See [`AudiencePolicy::may_see_last_seen`].
    fn may_see_last_seen(&self, who: &Identity, target: &UserId) -> bool {
        who.watch.allows(target.as_str())
    }
}

impl<T: SyncAudience> AudiencePolicy for T {
    fn may_join<'a>(&'a self, who: &'a Identity, room: &'a RoomId) -> BoxFuture<'a, bool> {
        Box::pin(std::future::ready(SyncAudience::may_join(self, who, room)))
    }

    fn may_watch<'a>(&'a self, who: &'a Identity, target: &'a UserId) -> BoxFuture<'a, bool> {
        Box::pin(std::future::ready(SyncAudience::may_watch(
            self, who, target,
        )))
    }

    fn may_see_last_seen(&self, who: &Identity, target: &UserId) -> bool {
        SyncAudience::may_see_last_seen(self, who, target)
    }
}

/// Any user may join any room and watch anyone (within their token's
/// scope). The default; fine for demos and for apps where presence is public.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAudience;

impl SyncAudience for OpenAudience {
    fn may_join(&self, _who: &Identity, _room: &RoomId) -> bool {
        true
    }

    fn may_watch(&self, _who: &Identity, _target: &UserId) -> bool {
        true
    }
}
