#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Layout:
//
//   main.rs    flags, tracing, bind, print the URL
//   lib.rs     Demo: presence-server's Router + the chat API + the page, one axum app
//   chat.rs    rooms of messages in memory (bounded), sequence numbers = read markers
//   api.rs     the chat's JSON endpoints and the page's SSE stream
//   assets.rs  the page (compiled in) and the npm package (from disk)
//   static/    the page: index.html, app.js, style.css
//   e2e/       Playwright end-to-end tests (two browsers, two users)

pub mod api;
pub mod assets;
pub mod chat;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use presence_server::PresenceServer;
use presence_server::presence_core::protocol::Diff;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::chat::Chat;

/// Page streams (SSE) open at once; more get 503.
pub const MAX_STREAMS: usize = 1000;

/// What the chat handlers share.
#[derive(Clone)]
pub struct AppState {
    chat: Arc<Chat>,
    presence: PresenceServer,
    streams: Arc<Semaphore>,
    /// Shared with [`Demo`], so a router outliving its `Demo` keeps its streams open.
    shutdown: Arc<watch::Sender<bool>>,
}

/// The demo app: a presence server embedded next to a small chat.
pub struct Demo {
    presence: PresenceServer,
    chat: Arc<Chat>,
    pkg_dir: PathBuf,
    shutdown: Arc<watch::Sender<bool>>,
    streams: Arc<Semaphore>,
}

impl Demo {
    /// Wraps a built presence server; `pkg_dir` is the npm package folder
    /// (`presence-wasm/pkg`). Must run inside a Tokio runtime: it starts a
    /// task that learns who is around from the presence event stream.
    pub fn new(presence: PresenceServer, pkg_dir: PathBuf) -> Self {
        let chat = Arc::new(Chat::new());
        let mut events = presence.events();
        let seen = Arc::downgrade(&chat);
        tokio::spawn(async move {
            // The feed use of presence: everyone who comes online is offered
            // to the pages' "active now" strip.
            while let Some(event) = events.recv().await {
                let Some(chat) = seen.upgrade() else { return };
                if let (true, Diff::UserConnected { presence }) = (event.global, &event.diff) {
                    chat.saw(presence.user.as_str());
                }
            }
        });
        let (shutdown, _) = watch::channel(false);
        Self {
            presence,
            chat,
            pkg_dir,
            shutdown: Arc::new(shutdown),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }

    /// The whole app: `/ws`, `/v1/...`, `/healthz`, `/metrics` from
    /// presence-server, `/api/...` for the chat, `/` and `/pkg/...` for the page.
    pub fn router(&self) -> Router {
        let state = AppState {
            chat: Arc::clone(&self.chat),
            presence: self.presence.clone(),
            streams: Arc::clone(&self.streams),
            shutdown: Arc::clone(&self.shutdown),
        };
        Router::new()
            .merge(self.presence.router())
            .merge(self.presence.ops_router())
            .merge(api::router(state))
            .merge(assets::router(self.pkg_dir.clone()))
    }

    /// The embedded presence server (for its events and host API).
    pub fn presence(&self) -> &PresenceServer {
        &self.presence
    }

    /// The chat store.
    pub fn chat(&self) -> &Chat {
        &self.chat
    }

    /// Serves on `listener` until `signal` resolves, then ends the page
    /// streams, closes the presence sockets with 1001 and drains.
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let presence = self.presence.clone();
        let shutdown = self.shutdown.clone();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                signal.await;
                let _ = shutdown.send(true);
                presence.shutdown().await;
            })
            .await
    }
}
