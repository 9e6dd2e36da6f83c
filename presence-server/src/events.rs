//! Presence events for the host application.

use futures_util::Stream;
use presence_core::Event;
use tokio::sync::broadcast;

/// A subscription to every event the presence machine emits, in order:
/// `user_connected`, `user_disconnected`, `user_left` (a room only),
/// `user_idle`, `user_active`,
/// `status`, `typing_started`/`typing_stopped` and `read`, and with
/// [`ServerConfig::viewing_events`](crate::ServerConfig::viewing_events)
/// this node's view changes (`viewing`). See [`presence_core::Event`] for
/// `rooms` and `global`.
///
/// Each subscriber has its own buffer ([`crate::ServerConfig::event_buffer`]
/// events). One that falls further behind skips the oldest events and counts
/// them in [`Events::missed`] instead of slowing the server.
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<Event>,
    missed: u64,
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self { rx, missed: 0 }
    }

    /// The next event; `None` once the server is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "event subscriber fell behind");
                    self.missed = self.missed.saturating_add(n);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Events skipped because this subscriber fell behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The subscription as a [`Stream`].
    pub fn into_stream(self) -> impl Stream<Item = Event> + Send + 'static {
        futures_util::stream::unfold(self, |mut events| async move {
            let event = events.recv().await?;
            Some((event, events))
        })
    }
}
