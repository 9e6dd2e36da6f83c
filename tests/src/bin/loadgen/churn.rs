//! Figure 4: connects and disconnects per second, then ghost users.
//!
//! Half the churned connections leave cleanly (`leaving` + close), half
//! vanish (the TCP socket is dropped without a close frame). An observer in
//! the room tracks who it believes is online; after the churn and the grace
//! periods, anyone still online is a ghost.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Target};
use crate::report::figure;

pub async fn run(
    target: &Target,
    sources: usize,
    rate: u32,
    seconds: Duration,
    settle: Duration,
) -> Result<()> {
    let room = format!("churn-{}", std::process::id());
    let mut observer = conn::open(target, conn::source(0, sources), "churn-observer").await?;
    conn::join(&mut observer, &room).await?;
    let (online_tx, online_rx) = tokio::sync::oneshot::channel::<HashSet<String>>();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut online = HashSet::new();
        loop {
            tokio::select! {
                frame = observer.next() => {
                    let Some(Ok(Message::Text(t))) = frame else { continue };
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else { continue };
                    for d in v["diffs"].as_array().into_iter().flatten() {
                        match d["type"].as_str() {
                            Some("user_connected") => {
                                if let Some(u) = d["presence"]["user"].as_str() { online.insert(u.to_owned()); }
                            }
                            Some("user_disconnected") => {
                                if let Some(u) = d["user"].as_str() { online.remove(u); }
                            }
                            _ => {}
                        }
                    }
                }
                _ = &mut stop_rx => { let _ = online_tx.send(online); return; }
            }
        }
    });
    let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let start = Instant::now();
    let mut spawned = 0u64;
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while start.elapsed() < seconds {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while spawned < due {
            let (target, room, err) = (target.clone(), room.clone(), err_tx.clone());
            let i = spawned as usize;
            tasks.push(tokio::spawn(async move {
                let run = async {
                    let mut ws =
                        conn::open(&target, conn::source(i, sources), &format!("c{i}")).await?;
                    conn::join(&mut ws, &room).await?;
                    tokio::time::sleep(Duration::from_millis((i as u64 * 37) % 300)).await;
                    if i.is_multiple_of(2) {
                        ws.send(Message::text(r#"{"type":"leaving"}"#)).await?;
                        ws.close(None).await?;
                    } else {
                        drop(ws); // no close frame: the server sees the TCP socket go
                    }
                    anyhow::Ok(())
                };
                if run.await.is_err() {
                    let _ = err.send(());
                }
            }));
            spawned += 1;
        }
    }
    // The rate counts connections started; a ghost check is only fair once
    // every churned connection has actually gone, so wait for them (bounded).
    let mut unfinished = 0;
    let all_done = tokio::time::Instant::now() + Duration::from_secs(60);
    for task in tasks {
        if tokio::time::timeout_at(all_done, task).await.is_err() {
            unfinished += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let _ = stop_tx.send(());
    let mut online = online_rx.await.unwrap_or_default();
    online.remove("churn-observer"); // it sees its own join
    if !online.is_empty() {
        let mut names: Vec<&String> = online.iter().collect();
        names.sort();
        names.truncate(20);
        eprintln!(
            "churn: {} still online after the graces, e.g. {names:?}",
            online.len()
        );
    }
    let mut errors = 0;
    while err_rx.try_recv().is_ok() {
        errors += 1;
    }
    figure(
        "churn.rate",
        spawned as f64 / elapsed,
        "connects+disconnects/s",
    );
    figure("churn.errors", f64::from(errors), "connections");
    figure("churn.unfinished", f64::from(unfinished), "connections");
    figure("churn.ghost_users", online.len() as f64, "users");
    Ok(())
}
