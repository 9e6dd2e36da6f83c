//! Presence server: tokio + axum WebSocket endpoint driving presence-core, with memory and Redis backends.
//!
//! Placeholder: the server is written in a later step.

#![forbid(unsafe_code)]
