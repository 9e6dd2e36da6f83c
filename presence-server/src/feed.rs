//! The event feed for backends: every host event numbered and encoded once,
//! kept in a bounded replay window, and served as Server-Sent Events at
//! `GET /v1/events` (service key) with `Last-Event-ID` resume.
//!
//! Ids grow across restarts: a node starts counting at its start time in
//! milliseconds × 1000, so an id from an earlier incarnation is always
//! older (unless that one averaged over 1,000 events per millisecond), and
//! after the last id the data directory kept, if there is one. With
//! `--data-dir` the window is written there every batch window and replayed
//! after a restart (a `kill -9` loses at most the last window's events);
//! without, a restart loses it. Webhooks take their events from here too,
//! so an event has the same id in both.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use presence_core::{Event, Millis};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

/// One numbered event, encoded once for every reader.
#[derive(Debug)]
pub(crate) struct Entry {
    pub id: u64,
    pub kind: String,
    pub json: String,
}

struct Ring {
    next: u64,
    entries: VecDeque<Arc<Entry>>,
    /// Entries not yet written to the data directory (none without one).
    unsaved: Vec<Arc<Entry>>,
    durable: bool,
}

/// The replay window and the live fan-out. Both are bounded by the same
/// capacity: a reader that falls that far behind is dropped and resumes.
pub(crate) struct Feed {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Entry>>,
    capacity: usize,
}

/// What a reader resuming after `last` gets: the kept entries after it, and
/// whether some it asked for are gone (or it named an id from the future).
pub(crate) struct Resume {
    pub replay: Vec<Arc<Entry>>,
    pub gap: Option<Gap>,
    pub live: broadcast::Receiver<Arc<Entry>>,
}

/// The events a reader asked for that the window cannot give.
pub(crate) struct Gap {
    /// The gap's SSE `id:`: just before the first event that follows it
    /// (the oldest kept one, or the next to come if none follows), so a
    /// reader that reconnects right after the gap gets those events and no
    /// gap again: nothing twice, nothing skipped.
    pub id: u64,
    /// `{"after", "oldest", "next"}`.
    pub data: Value,
}

impl Feed {
    pub fn new(capacity: usize, started: Millis) -> Self {
        Self {
            ring: Mutex::new(Ring {
                next: first_id(started),
                entries: VecDeque::with_capacity(capacity.min(1024)),
                unsaved: Vec::new(),
                durable: false,
            }),
            tx: broadcast::channel(capacity.max(1)).0,
            capacity,
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes back what the data directory kept (oldest first), and keeps
    /// writing there from now on.
    pub fn restore(&self, kept: Vec<(u64, String, String)>) {
        let mut ring = self.ring();
        ring.durable = true;
        for (id, kind, json) in kept {
            if ring.entries.len() == self.capacity {
                ring.entries.pop_front();
            }
            ring.next = ring.next.max(id + 1);
            ring.entries.push_back(Arc::new(Entry { id, kind, json }));
        }
    }

    /// The entries to write to the data directory now.
    pub fn take_unsaved(&self) -> Vec<Arc<Entry>> {
        std::mem::take(&mut self.ring().unsaved)
    }

    /// Entries whose write failed, to write with the next (bounded by the
    /// window: older ones would be trimmed anyway).
    pub fn retry_unsaved(&self, mut failed: Vec<Arc<Entry>>) {
        let mut ring = self.ring();
        failed.append(&mut ring.unsaved);
        let extra = failed.len().saturating_sub(self.capacity);
        failed.drain(..extra);
        ring.unsaved = failed;
    }

    /// The window's size.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Numbers, encodes and keeps one host event.
    pub fn push(&self, ev: &Event) {
        let mut ring = self.ring();
        let id = ring.next;
        ring.next += 1;
        let entry = Arc::new(Entry {
            id,
            kind: ev.name().to_owned(),
            json: encode(ev, json!(id)),
        });
        if ring.entries.len() == self.capacity {
            ring.entries.pop_front();
        }
        if ring.durable {
            if ring.unsaved.len() == self.capacity {
                ring.unsaved.remove(0);
            }
            ring.unsaved.push(entry.clone());
        }
        ring.entries.push_back(entry.clone());
        // No reader is fine.
        let _ = self.tx.send(entry);
    }

    /// Every entry from now on, as readers get them live (webhooks take
    /// theirs here, so an event has one id in both).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.tx.subscribe()
    }

    /// Subscribes and takes the replay after `last` at one instant, so no
    /// event falls between the two.
    pub fn resume(&self, last: Option<u64>) -> Resume {
        let ring = self.ring();
        let live = self.tx.subscribe();
        let Some(last) = last else {
            return Resume {
                replay: Vec::new(),
                gap: None,
                live,
            };
        };
        let oldest = ring.entries.front().map_or(ring.next, |e| e.id);
        let replay: Vec<Arc<Entry>> = ring
            .entries
            .iter()
            .filter(|e| e.id > last)
            .cloned()
            .collect();
        let gap = (last.saturating_add(1) < oldest || last >= ring.next).then(|| Gap {
            id: replay.first().map_or(ring.next, |e| e.id).saturating_sub(1),
            data: json!({ "after": last, "oldest": oldest, "next": ring.next }),
        });
        Resume { replay, gap, live }
    }
}

/// The first id of a node started at `started` (see the module docs).
pub(crate) fn first_id(started: Millis) -> u64 {
    started.0.saturating_mul(1000)
}

/// A host event as backends read it (feed, stream and webhooks): the
/// diff's fields plus `id`, `at`, `global` and `rooms`.
pub(crate) fn encode(ev: &Event, id: Value) -> String {
    let mut body = serde_json::to_value(&ev.diff).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut body {
        fields.insert("id".into(), id);
        fields.insert("at".into(), json!(ev.at));
        fields.insert("global".into(), json!(ev.global));
        fields.insert("rooms".into(), json!(ev.rooms));
    }
    body.to_string()
}

fn sse(entry: &Entry) -> SseEvent {
    SseEvent::default()
        .id(entry.id.to_string())
        .event(entry.kind.as_str())
        .data(&entry.json)
}

/// The SSE response: a `gap` event if the replay cannot cover what was
/// asked (resync from the HTTP API; its `id:` is [`Gap::id`]), the replay,
/// then live events. Ends when the reader falls a whole window behind (it
/// resumes with its `Last-Event-ID`) and when the server shuts down.
pub(crate) fn stream(
    resume: Resume,
    mut shutdown: watch::Receiver<bool>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let Resume { replay, gap, live } = resume;
    let last = replay.last().map(|e| e.id);
    let head = gap
        .map(|g| {
            SseEvent::default()
                .id(g.id.to_string())
                .event("gap")
                .data(g.data.to_string())
        })
        .into_iter()
        .chain(replay.iter().map(|e| sse(e)))
        .map(Ok)
        .collect::<Vec<_>>();
    let tail = futures_util::stream::unfold((live, last), |(mut live, last)| async move {
        loop {
            match live.recv().await {
                Ok(e) if last.is_some_and(|l| e.id <= l) => continue,
                Ok(e) => return Some((Ok(sse(&e)), (live, None))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::info!(skipped = n, "event feed reader fell behind; dropped");
                    return None;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let events = futures_util::stream::iter(head)
        .chain(tail)
        .take_until(stop);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::UserId;
    use presence_core::protocol::Diff;

    fn event(at: u64) -> Event {
        Event {
            diff: Diff::UserActive {
                user: UserId::new("ana").expect("a user id"),
            },
            at: Millis(at),
            global: true,
            rooms: Vec::new(),
        }
    }

    #[test]
    fn a_gap_is_numbered_just_before_what_follows_it_so_resuming_there_is_gapless() {
        let feed = Feed::new(2, Millis(7));
        for at in 0..5 {
            feed.push(&event(at));
        }
        let first = first_id(Millis(7));
        // The window holds first + 3 and first + 4.
        let old = feed.resume(Some(first)).gap.expect("a gap");
        assert_eq!(old.id, first + 2);
        let future = feed.resume(Some(first + 100)).gap.expect("a gap");
        assert_eq!(future.id, first + 4);
        for (gap, replayed) in [(old, 2), (future, 0)] {
            let back = feed.resume(Some(gap.id));
            assert!(back.gap.is_none(), "{}", gap.data);
            assert_eq!(back.replay.len(), replayed);
        }
        let empty = Feed::new(2, Millis(9));
        let gap = empty.resume(Some(3)).gap.expect("a gap");
        assert_eq!(gap.id, first_id(Millis(9)) - 1);
        assert!(empty.resume(Some(gap.id)).gap.is_none());
    }
}
