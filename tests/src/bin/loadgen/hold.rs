//! Figure 1: connections held, server memory and heartbeat CPU.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Target};
use crate::report::{figure, process};

pub async fn run(
    target: &Target,
    sources: usize,
    n: usize,
    pid: u32,
    hold: Duration,
    heartbeat: Duration,
) -> Result<()> {
    let (rss0, _) = process(pid);
    let started = Instant::now();
    let opening = std::sync::Arc::new(Semaphore::new(256));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<bool>(1024);
    let deadline = started + Duration::from_secs(600);
    for i in 0..n {
        let (target, opening, done) = (target.clone(), opening.clone(), done_tx.clone());
        tokio::spawn(async move {
            let Ok(permit) = opening.acquire_owned().await else {
                return;
            };
            let opened = conn::open(&target, conn::source(i, sources), &format!("h{i}")).await;
            drop(permit);
            let Ok(mut ws) = opened else {
                let _ = done.send(false).await;
                return;
            };
            let _ = done.send(true).await;
            // Heartbeat like a real client, jittered ±10 % by index.
            let jitter = heartbeat.as_millis() as u64 / 10;
            let offset = Duration::from_millis((i as u64 * 7919) % (2 * jitter + 1));
            let period = heartbeat - Duration::from_millis(jitter) + offset;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() { return; }
                    }
                    frame = ws.next() => if !matches!(frame, Some(Ok(_))) { return; },
                    _ = tokio::time::sleep_until(deadline.into()) => return,
                }
            }
        });
    }
    drop(done_tx);
    let (mut ok, mut failed) = (0usize, 0usize);
    while ok + failed < n {
        match tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await {
            Ok(Some(true)) => ok += 1,
            Ok(Some(false)) => failed += 1,
            _ => break,
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, cpu1) = process(pid);
    let t1 = Instant::now();
    tokio::time::sleep(hold).await;
    let (_, cpu2) = process(pid);
    let held_secs = t1.elapsed().as_secs_f64();
    figure("hold.connections", ok as f64, "connections");
    figure("hold.failed", failed as f64, "connections");
    figure("hold.open_rate", ok as f64 / open_secs, "connections/s");
    figure("hold.server_rss", rss1 as f64, "bytes");
    figure(
        "hold.server_rss_per_connection",
        rss1.saturating_sub(rss0) as f64 / ok.max(1) as f64,
        "bytes",
    );
    figure(
        "hold.server_cpu_heartbeats",
        100.0 * (cpu2 - cpu1) / held_secs,
        "% of one core",
    );
    Ok(())
}
