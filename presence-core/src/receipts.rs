//! Read receipts as a room keeps them, whoever is online: which readers a
//! snapshot shows, and "seen by 37" for a message.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::protocol::Receipt;

/// Keeps the `k` most advanced receipts (highest marker, then user id),
/// in that order.
pub fn most_advanced(receipts: &mut Vec<Receipt>, k: usize) {
    receipts.sort_unstable_by(|a, b| b.marker.cmp(&a.marker).then_with(|| a.user.cmp(&b.user)));
    receipts.truncate(k);
}

/// Who has read a room up to `at` or past it: `count`, and one page of
/// them, most advanced first (ties by user id).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Readers {
    /// Readers at or past the marker.
    pub count: usize,
    /// This page of them.
    pub users: Vec<Receipt>,
    /// The cursor of the next page (`<marker>:<user>`), if more follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The position after which a page starts: a `next` cursor.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct After {
    marker: u64,
    user: UserId,
}

impl After {
    /// Reads a `next` cursor; `None` if it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let (marker, user) = s.split_once(':')?;
        Some(Self {
            marker: marker.parse().ok()?,
            user: UserId::new(user).ok()?,
        })
    }

    fn of(r: &Receipt) -> String {
        format!("{}:{}", r.marker, r.user)
    }

    /// Whether `r` comes after this position in the order of [`Readers`].
    fn before(&self, r: &Receipt) -> bool {
        r.marker < self.marker || (r.marker == self.marker && r.user > self.user)
    }
}

/// Counts the readers at or past `at` among `reads`, and lists `limit` of
/// them after `after`. One pass, and a sort of the page's candidates only.
pub fn readers<'a>(
    reads: impl Iterator<Item = (&'a UserId, u64)>,
    at: u64,
    after: Option<&After>,
    limit: usize,
) -> Readers {
    let mut count = 0;
    let mut page: Vec<Receipt> = Vec::new();
    for (user, marker) in reads {
        if marker < at {
            continue;
        }
        count += 1;
        let r = Receipt {
            user: user.clone(),
            marker,
        };
        if after.is_none_or(|a| a.before(&r)) {
            page.push(r);
        }
    }
    most_advanced(&mut page, limit.saturating_add(1));
    let next = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(After::of)
    });
    Readers {
        count,
        users: page,
        next: next.flatten(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn pages_list_each_reader_once_most_advanced_first() {
        let reads = [
            (u("ana"), 10),
            (u("bob"), 12),
            (u("cy"), 10),
            (u("dee"), 3),
            (u("eve"), 11),
        ];
        let iter = || reads.iter().map(|(u, m)| (u, *m));
        let first = readers(iter(), 10, None, 2);
        assert_eq!(first.count, 4, "dee read less");
        let names = |r: &Readers| {
            r.users
                .iter()
                .map(|r| r.user.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&first), ["bob", "eve"]);
        let after = After::parse(first.next.as_deref().unwrap()).unwrap();
        let second = readers(iter(), 10, Some(&after), 2);
        assert_eq!(names(&second), ["ana", "cy"]);
        assert_eq!(second.next, None);
        assert_eq!(After::parse("x:ana"), None);
        assert_eq!(After::parse("12"), None);
    }
}
