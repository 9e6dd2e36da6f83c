//! The bounded queue from a backend to its node ([`Backend::incoming`]),
//! shared by both implementations.
//!
//! Delivery never waits: it runs inside the engine's reader (a Redis push
//! callback, or a publisher in [`MemoryCluster`]), which must not stall on a
//! slow node. When the queue is full the message is dropped and the node is
//! owed one [`Incoming::Reset`]; until that Reset is queued every further
//! message is dropped too, so the node never sees a message from after a gap
//! before the Reset that tells it to re-read. The Reset goes in as soon as
//! there is room (a waiter task reserves the slot).
//!
//! [`Backend::incoming`]: super::Backend::incoming
//! [`MemoryCluster`]: super::MemoryCluster

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::{Incoming, Topic};

/// Capacity of a node's incoming queue.
pub(crate) const INCOMING_CAPACITY: usize = 4096;

/// The sending side of one node's incoming queue (cheap to clone).
#[derive(Clone)]
pub(crate) struct Inbox {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Incoming>,
    /// Handed out once by [`Inbox::take_receiver`].
    rx: Mutex<Option<mpsc::Receiver<Incoming>>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Messages were dropped: a Reset must precede anything else.
    owed_reset: bool,
    /// A task is waiting for room to queue the owed Reset.
    waiting: bool,
}

impl Inbox {
    /// A queue holding at most `capacity` undelivered items.
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Self {
            inner: Arc::new(Inner {
                tx,
                rx: Mutex::new(Some(rx)),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The receiving end; a second call gets a receiver that is already
    /// closed (the contract says `incoming` is called once).
    pub(crate) fn take_receiver(&self) -> mpsc::Receiver<Incoming> {
        if let Some(rx) = lock(&self.inner.rx).take() {
            return rx;
        }
        tracing::warn!("backend: incoming() called twice; the second receiver is closed");
        let (_, rx) = mpsc::channel(1);
        rx
    }

    /// Queues a message, or drops it (owing a Reset) if the queue is full.
    pub(crate) fn message(&self, topic: Topic, payload: Vec<u8>) {
        self.push(Incoming::Message(topic, payload));
    }

    /// Queues a Reset (now, or as soon as there is room).
    pub(crate) fn reset(&self) {
        self.push(Incoming::Reset);
    }

    fn push(&self, item: Incoming) {
        let mut state = lock(&self.inner.state);
        if state.owed_reset {
            match self.inner.tx.try_send(Incoming::Reset) {
                Ok(()) => state.owed_reset = false,
                Err(_) => return,
            }
            if item == Incoming::Reset {
                return;
            }
        }
        match self.inner.tx.try_send(item) {
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => {
                state.owed_reset = true;
                self.wait_for_room(&mut state);
            }
        }
    }

    /// Starts the task that queues the owed Reset once there is room (the
    /// next push would too, but the bus may stay quiet).
    fn wait_for_room(&self, state: &mut State) {
        if state.waiting {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.waiting = true;
        let inner = self.inner.clone();
        runtime.spawn(async move {
            let permit = inner.tx.reserve().await;
            let mut state = lock(&inner.state);
            state.waiting = false;
            if let Ok(permit) = permit
                && state.owed_reset
            {
                permit.send(Incoming::Reset);
                state.owed_reset = false;
            }
        });
    }
}

/// Locks ignoring poison: the guarded state stays consistent at every step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Topic {
        Topic::Room(presence_core::RoomId::new("r").expect("valid room"))
    }

    #[tokio::test]
    async fn overflow_drops_until_a_reset_is_queued() {
        let inbox = Inbox::new(2);
        let mut rx = inbox.take_receiver();
        inbox.message(topic(), b"1".to_vec());
        inbox.message(topic(), b"2".to_vec());
        inbox.message(topic(), b"3".to_vec()); // dropped: Reset owed
        assert_eq!(
            rx.recv().await,
            Some(Incoming::Message(topic(), b"1".to_vec()))
        );
        // The waiter takes the freed slot, though the bus stays quiet.
        tokio::task::yield_now().await;
        assert_eq!(
            rx.recv().await,
            Some(Incoming::Message(topic(), b"2".to_vec()))
        );
        assert_eq!(rx.recv().await, Some(Incoming::Reset));
        inbox.message(topic(), b"5".to_vec());
        assert_eq!(
            rx.recv().await,
            Some(Incoming::Message(topic(), b"5".to_vec()))
        );
    }

    #[tokio::test]
    async fn second_receiver_is_closed() {
        let inbox = Inbox::new(2);
        let _rx = inbox.take_receiver();
        let mut again = inbox.take_receiver();
        assert_eq!(again.recv().await, None);
    }
}
