//! Ranked bulk presence: up to 10,000 users (a feed's friends) ranked and
//! paged in one query. The ranking is computed afresh on every page, so a
//! page shows users as they are now; the cursor remembers which of the
//! request's users were already returned (a bitmap over the list), so while
//! users change state between pages each one still comes exactly once.

use std::cmp::Reverse;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use presence_core::{IdleReason, PresenceState, PresenceView, UserId};
use serde::{Deserialize, Serialize};

/// Users one ranked query may name.
pub const MAX_RANKED_USERS: usize = 10_000;
/// Users one ranked page lists at most (and 100 by default).
pub const MAX_RANKED_PAGE: usize = 1_000;
/// The largest bulk request body: 10,000 ids of up to 128 bytes, quoted,
/// and a cursor.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// How to rank.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Active, then idle by the reason order (`no_input`, `blurred`,
    /// `hidden`, `locked`), then offline by last seen, latest first.
    PresentFirst,
    /// By the last sign of activity, latest first: active users (now), then
    /// idle ones by when they went idle, then offline ones by last seen.
    Recent,
}

/// One page of a ranked query.
#[derive(Clone, Debug, Serialize)]
pub struct Ranked {
    /// This page, ranked.
    pub users: Vec<PresenceView>,
    /// All the visible users of the query, by state, as of this page.
    pub counts: StateCounts,
    /// Users the caller may not see (each page lists them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forbidden: Vec<UserId>,
    /// Pass as `after`, with the same `users` and `order`, for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Users by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    /// Active.
    pub active: usize,
    /// Idle.
    pub idle: usize,
    /// Offline (invisible users among them).
    pub offline: usize,
}

/// A bad ranked query.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RankError {
    /// More users than [`MAX_RANKED_USERS`].
    #[error("at most {MAX_RANKED_USERS} users per ranked query")]
    TooMany,
    /// `limit` outside 1..=[`MAX_RANKED_PAGE`].
    #[error("limit must be 1 to {MAX_RANKED_PAGE}")]
    BadLimit,
    /// `after` is not a cursor this query gave (another list, or tampered).
    #[error("after is not a cursor of this query (same users, same order)")]
    BadCursor,
}

/// Which of the request's users were returned already.
struct Taken(Vec<u8>);

impl Taken {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(8)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 8] & (1 << (i % 8)) != 0
    }
    fn set(&mut self, i: usize) {
        self.0[i / 8] |= 1 << (i % 8);
    }
}

/// FNV-1a over the ids and the order: a cursor belongs to one query.
fn digest(users: &[UserId], order: Order) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: u8| {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    };
    eat(order as u8);
    for u in users {
        u.as_str().bytes().for_each(&mut eat);
        eat(0);
    }
    h
}

fn encode(d: u32, taken: &Taken) -> String {
    format!("{d:08x}.{}", URL_SAFE_NO_PAD.encode(&taken.0))
}

fn decode(s: &str, d: u32, n: usize) -> Result<Taken, RankError> {
    let (head, bits) = s.split_once('.').ok_or(RankError::BadCursor)?;
    if u32::from_str_radix(head, 16) != Ok(d) {
        return Err(RankError::BadCursor);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(bits)
        .map_err(|_| RankError::BadCursor)?;
    if bytes.len() != n.div_ceil(8) {
        return Err(RankError::BadCursor);
    }
    Ok(Taken(bytes))
}

fn reason_rank(r: Option<IdleReason>) -> u8 {
    match r {
        None | Some(IdleReason::NoInput) => 0,
        Some(IdleReason::Blurred) => 1,
        Some(IdleReason::Hidden) => 2,
        Some(IdleReason::Locked) => 3,
    }
}

/// The sort key: smaller ranks first; ties by user id.
fn key(order: Order, v: &PresenceView) -> (u8, u8, Reverse<u64>) {
    let last_active = v.last_active.map_or(0, |m| m.0);
    let last_seen = v.last_seen.map_or(0, |m| m.0);
    match (order, v.state) {
        (Order::PresentFirst, PresenceState::Active) => (0, 0, Reverse(last_active)),
        (Order::PresentFirst, PresenceState::Idle) => {
            (1, reason_rank(v.reason), Reverse(last_active))
        }
        (_, PresenceState::Offline) => (2, 0, Reverse(last_seen)),
        (Order::Recent, PresenceState::Active) => (0, 0, Reverse(u64::MAX)),
        (Order::Recent, PresenceState::Idle) => (1, 0, Reverse(last_active)),
    }
}

/// Unique ids, in the order given: a list with repeats ranks each once.
pub fn unique(users: Vec<UserId>) -> Vec<UserId> {
    let mut seen = std::collections::HashSet::with_capacity(users.len());
    users
        .into_iter()
        .filter(|u| seen.insert(u.clone()))
        .collect()
}

/// One page: `views` are the visible users' presence now, each with its
/// index in `users` (the query's unique ids).
pub fn page(
    users: &[UserId],
    views: Vec<(usize, PresenceView)>,
    forbidden: Vec<UserId>,
    order: Order,
    limit: usize,
    after: Option<&str>,
) -> Result<Ranked, RankError> {
    if users.len() > MAX_RANKED_USERS {
        return Err(RankError::TooMany);
    }
    if !(1..=MAX_RANKED_PAGE).contains(&limit) {
        return Err(RankError::BadLimit);
    }
    let d = digest(users, order);
    let mut taken = match after {
        Some(a) => decode(a, d, users.len())?,
        None => Taken::new(users.len()),
    };
    let mut counts = StateCounts::default();
    for (_, v) in &views {
        match v.state {
            PresenceState::Active => counts.active += 1,
            PresenceState::Idle => counts.idle += 1,
            PresenceState::Offline => counts.offline += 1,
        }
    }
    let mut left: Vec<(usize, PresenceView)> =
        views.into_iter().filter(|(i, _)| !taken.get(*i)).collect();
    left.sort_by(|(_, a), (_, b)| {
        key(order, a)
            .cmp(&key(order, b))
            .then_with(|| a.user.cmp(&b.user))
    });
    let more = left.len() > limit;
    left.truncate(limit);
    for (i, _) in &left {
        taken.set(*i);
    }
    Ok(Ranked {
        users: left.into_iter().map(|(_, v)| v).collect(),
        counts,
        forbidden,
        next: more.then(|| encode(d, &taken)),
    })
}

#[cfg(test)]
mod tests {
    use presence_core::Millis;

    use super::*;

    fn view(user: &str, state: PresenceState, reason: Option<IdleReason>, t: u64) -> PresenceView {
        let mut v = PresenceView::offline(UserId::new(user).unwrap());
        v.state = state;
        v.reason = reason;
        if state.is_online() {
            v.last_active = Some(Millis(t));
        } else {
            v.last_seen = Some(Millis(t));
        }
        v
    }

    #[test]
    fn pages_rank_afresh_and_list_each_user_once_while_they_change() {
        use PresenceState::*;
        let users: Vec<UserId> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|u| UserId::new(*u).unwrap())
            .collect();
        let now = |states: [(PresenceState, Option<IdleReason>, u64); 5]| {
            users
                .iter()
                .zip(states)
                .enumerate()
                .map(|(i, (u, (s, r, t)))| (i, view(u.as_str(), s, r, t)))
                .collect::<Vec<_>>()
        };
        let first = page(
            &users,
            now([
                (Offline, None, 5),
                (Idle, Some(IdleReason::Hidden), 9),
                (Active, None, 1),
                (Idle, Some(IdleReason::NoInput), 2),
                (Offline, None, 7),
            ]),
            Vec::new(),
            Order::PresentFirst,
            2,
            None,
        )
        .unwrap();
        let names = |r: &Ranked| {
            r.users
                .iter()
                .map(|v| v.user.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&first), ["c", "d"], "active, then idle without input");
        assert_eq!(
            first.counts,
            StateCounts {
                active: 1,
                idle: 2,
                offline: 2
            }
        );
        // c went offline and a came online meanwhile: c is not listed again.
        let second = page(
            &users,
            now([
                (Active, None, 20),
                (Idle, Some(IdleReason::Hidden), 9),
                (Offline, None, 21),
                (Idle, Some(IdleReason::NoInput), 2),
                (Offline, None, 7),
            ]),
            Vec::new(),
            Order::PresentFirst,
            2,
            first.next.as_deref(),
        )
        .unwrap();
        assert_eq!(names(&second), ["a", "b"]);
        let third = page(
            &users,
            now([
                (Active, None, 20),
                (Idle, Some(IdleReason::Hidden), 9),
                (Offline, None, 21),
                (Idle, Some(IdleReason::NoInput), 2),
                (Offline, None, 7),
            ]),
            Vec::new(),
            Order::PresentFirst,
            2,
            second.next.as_deref(),
        )
        .unwrap();
        assert_eq!(names(&third), ["e"]);
        assert_eq!(third.next, None);
        // A cursor of another query, or a tampered one, is refused.
        assert!(matches!(
            page(
                &users,
                Vec::new(),
                Vec::new(),
                Order::Recent,
                2,
                first.next.as_deref()
            ),
            Err(RankError::BadCursor)
        ));
        assert!(matches!(
            page(
                &users,
                Vec::new(),
                Vec::new(),
                Order::PresentFirst,
                2,
                Some("00.AA")
            ),
            Err(RankError::BadCursor)
        ));
        assert!(matches!(
            page(&users, Vec::new(), Vec::new(), Order::PresentFirst, 0, None),
            Err(RankError::BadLimit)
        ));
    }

    #[test]
    fn recent_ranks_by_the_last_sign_of_activity() {
        use PresenceState::*;
        let users: Vec<UserId> = ["a", "b", "c"]
            .iter()
            .map(|u| UserId::new(*u).unwrap())
            .collect();
        let views = vec![
            (0, view("a", Offline, None, 50)),
            (1, view("b", Idle, Some(IdleReason::Locked), 40)),
            (2, view("c", Idle, Some(IdleReason::NoInput), 10)),
        ];
        let r = page(&users, views, Vec::new(), Order::Recent, 10, None).unwrap();
        let names: Vec<String> = r.users.iter().map(|v| v.user.to_string()).collect();
        assert_eq!(
            names,
            ["b", "c", "a"],
            "online before offline, then the latest first"
        );
    }
}
