//! The shutdown signal binaries (this crate's and embedding apps') wait on.

/// Resolves on SIGINT (Ctrl-C) or SIGTERM; pass it to
/// [`crate::PresenceServer::serve`] to get the graceful shutdown (sockets
/// closed with 1001, then drained).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: closing sockets with 1001");
}
