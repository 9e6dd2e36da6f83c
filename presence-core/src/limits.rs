//! Every bound the protocol and the machine enforce, in one place.
//!
//! The server enforces the same numbers; PROTOCOL.md lists them. A client that
//! exceeds one gets an error frame with a stable code, never a panic.

/// Largest client frame accepted, in bytes. Presence frames are tiny; anything
/// bigger is a bug or an attack.
pub const MAX_FRAME_BYTES: usize = 4 * 1024;
/// Longest token an `auth` frame may carry, in bytes; an `auth` frame may
/// exceed [`MAX_FRAME_BYTES`] by that much, since tokens with claims are big.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest `data` object a client may set, compact, by default (the server
/// can lower or raise it up to the frame limit).
pub const MAX_DATA_BYTES: usize = 1024;
/// Largest `info` object a token or authenticator may give, compact.
pub const MAX_INFO_BYTES: usize = 1024;
/// Longest user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;
/// Longest room id, in bytes.
pub const MAX_ROOM_ID_BYTES: usize = 128;
/// Longest resume token, in bytes.
pub const MAX_RESUME_TOKEN_BYTES: usize = 128;
/// Longest status text, in characters (not bytes).
pub const MAX_STATUS_TEXT_CHARS: usize = 100;
/// Rooms one connection may have joined at once.
pub const MAX_ROOMS_PER_CONNECTION: usize = 64;
/// Users one connection may watch at once (its contact list).
pub const MAX_WATCHED_PER_CONNECTION: usize = 1_000;
/// Users named in one watch or unwatch frame.
pub const MAX_USERS_PER_WATCH_FRAME: usize = 200;
/// Connections (tabs, devices) one user may hold at once; the oldest detached
/// one is dropped first when a new one arrives at the limit.
pub const MAX_CONNECTIONS_PER_USER: usize = 32;
/// Largest read marker: JavaScript's `Number.MAX_SAFE_INTEGER`, so markers
/// survive a round trip through a browser exactly.
pub const MAX_READ_MARKER: u64 = (1 << 53) - 1;
/// Read markers of readers who are not members now (offline, or gone from
/// the room) a snapshot carries at most: the most advanced ones.
pub const RECEIPTS_KEPT: usize = 100;
/// Readers one `GET /v1/rooms/{room}/receipts` page lists at most.
pub const MAX_READERS_PAGE: usize = 1_000;
/// Members a large room's snapshot lists at most (the first online ones in
/// user-id order); its counts tell how many there are.
pub const MAX_LARGE_SNAPSHOT_MEMBERS: usize = 200;
/// Members a large room's summary lists as joined at most: a view is about
/// 100 bytes, and while thousands join, every member gets a summary a second.
pub const MAX_SUMMARY_JOINED: usize = 20;
/// Members a large room's summary lists as left at most; an id is a few
/// bytes, and a client's list must lose who left.
pub const MAX_SUMMARY_LEFT: usize = 100;
/// A summary's encoded size at most: past it, its lists are cut. A socket
/// keeps the buffer of the largest frame it was sent, and every member of
/// a large room gets summaries: as small as its snapshot's parts.
pub const MAX_SUMMARY_BYTES: usize = 2 * 1024;
