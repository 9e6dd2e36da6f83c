//! Figure 2: a room of M members where every member changes state once.
//! Measures the time until all M have opened, joined and got their
//! snapshot (128 handshakes in flight), and the time until every member has
//! seen every change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Barrier, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Target};
use crate::report::{figure, process};

struct Seen {
    done_after: Option<Duration>,
    frames: u64,
    bytes: u64,
}

/// Waits at `barrier` while reading (and discarding) what arrives; a socket
/// that fails meanwhile is dropped.
async fn drain_until(barrier: &Barrier, ws: Option<&mut conn::Ws>) {
    let wait = barrier.wait();
    tokio::pin!(wait);
    let Some(ws) = ws else {
        wait.await;
        return;
    };
    // Filling a big room takes minutes: heartbeat meanwhile, like a client.
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    loop {
        tokio::select! {
            _ = &mut wait => return,
            _ = ping.tick() => {
                if ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                    wait.await;
                    return;
                }
            }
            frame = ws.next() => if !matches!(frame, Some(Ok(_))) {
                wait.await;
                return;
            },
        }
    }
}

/// What every member changes once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Change {
    /// Goes idle: `user_idle` to everyone.
    Idle,
    /// Reads the room: `read` to everyone, nobody's privacy in the way.
    Read,
    /// Reads the room, member 0 having receipts off: it sees only its own
    /// marker and nobody sees its, so every batch is cut per recipient
    /// group (privacy at fan-out, worst case).
    ReadBlind,
}

pub async fn run(
    target: &Target,
    sources: usize,
    m: usize,
    server: Option<u32>,
    change: Change,
) -> Result<()> {
    let rss = || server.map(|pid| process(pid).0);
    let rss0 = rss();
    let room = format!("fanout-{m}-{}", std::process::id());
    let ready = Arc::new(Barrier::new(m + 1));
    let quiet = Arc::new(Barrier::new(m + 1));
    let go = Arc::new(tokio::sync::Notify::new());
    let opening = Arc::new(Semaphore::new(128));
    let start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut tasks = Vec::with_capacity(m);
    let filling = Instant::now();
    for i in 0..m {
        let (target, room, ready, quiet, go, opening, start) = (
            target.clone(),
            room.clone(),
            ready.clone(),
            quiet.clone(),
            go.clone(),
            opening.clone(),
            start.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await.ok();
            let opened = async {
                let mut ws =
                    conn::open(&target, conn::source(i, sources), &format!("f{i}")).await?;
                if change == Change::ReadBlind && i == 0 {
                    ws.send(Message::text(r#"{"type":"privacy","receipts":"off"}"#))
                        .await?;
                }
                conn::join(&mut ws, &room).await?;
                anyhow::Ok(ws)
            }
            .await;
            drop(permit);
            let waiting = go.notified();
            let mut ws = match opened {
                Ok(ws) => Some(ws),
                Err(e) => {
                    // Still meet the others at both barriers, then fail.
                    drain_until(&ready, None).await;
                    drain_until(&quiet, None).await;
                    return Err(e);
                }
            };
            // Keep reading while the others join (a member that stops reading
            // is rightly closed as a slow consumer), then until 300 ms of
            // quiet, so only the measured changes are counted.
            drain_until(&ready, ws.as_mut()).await;
            if let Some(ws) = ws.as_mut() {
                while let Ok(Some(Ok(_))) =
                    tokio::time::timeout(Duration::from_millis(300), ws.next()).await
                {
                }
            }
            drain_until(&quiet, ws.as_mut()).await;
            let Some(mut ws) = ws else {
                bail!("member {i} lost its socket while the room filled");
            };
            waiting.await;
            let (send, counted, expect) = match change {
                Change::Idle => (conn::activity(true), r#""type":"user_idle""#, m),
                _ => {
                    let read = format!(r#"{{"type":"read","room":"{room}","marker":1}}"#);
                    // Member 0 with receipts off sees its own marker only, and
                    // nobody sees its.
                    let expect = match (change, i) {
                        (Change::ReadBlind, 0) => 1,
                        (Change::ReadBlind, _) => m - 1,
                        _ => m,
                    };
                    (Message::text(read), r#""type":"read""#, expect)
                }
            };
            ws.send(send).await?;
            let t0 = *start.get().unwrap_or(&Instant::now());
            let mut seen = Seen {
                done_after: None,
                frames: 0,
                bytes: 0,
            };
            let mut idle = 0usize;
            let deadline = tokio::time::sleep(Duration::from_secs(120));
            tokio::pin!(deadline);
            while idle < expect {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(t))) => {
                            if t.starts_with(r#"{"type":"diffs""#) {
                                seen.frames += 1;
                                seen.bytes += t.len() as u64;
                                idle += t.matches(counted).count();
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => bail!("member {i} lost its socket"),
                    },
                    _ = &mut deadline => bail!("member {i} saw {idle} of {expect} changes in 120 s"),
                }
            }
            seen.done_after = Some(t0.elapsed());
            Ok(seen)
        }));
    }
    ready.wait().await;
    let joined = filling.elapsed();
    quiet.wait().await;
    let rss_joined = rss();
    let _ = start.set(Instant::now());
    go.notify_waiters();
    let (mut slowest, mut frames, mut bytes, mut failed) = (Duration::ZERO, 0, 0, 0);
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => {
                slowest = slowest.max(s.done_after.unwrap_or_default());
                frames += s.frames;
                bytes += s.bytes;
            }
            Ok(Err(e)) => {
                failed += 1;
                if failed == 1 {
                    eprintln!("fanout: {e:#}");
                }
            }
            Err(_) => failed += 1,
        }
    }
    let updates = m as f64;
    let deliveries = (m * m) as f64;
    figure(
        &format!("fanout.{m}.join"),
        joined.as_secs_f64() * 1000.0,
        "ms",
    );
    figure(
        &format!("fanout.{m}.converge"),
        slowest.as_secs_f64() * 1000.0,
        "ms",
    );
    figure(
        &format!("fanout.{m}.deliveries_per_second"),
        deliveries / slowest.as_secs_f64().max(1e-9),
        "member-updates/s",
    );
    figure(
        &format!("fanout.{m}.frames_per_update"),
        frames as f64 / updates,
        "frames",
    );
    figure(
        &format!("fanout.{m}.bytes_per_update"),
        bytes as f64 / updates,
        "bytes",
    );
    figure(
        &format!("fanout.{m}.failed_members"),
        failed as f64,
        "members",
    );
    // Memory the server holds per member: what the room costs beyond an
    // empty server, once everyone joined and once every change went out.
    if let (Some(r0), Some(joined), Some(done)) = (rss0, rss_joined, rss()) {
        let per = |r: u64| r.saturating_sub(r0) as f64 / m as f64;
        figure(
            &format!("fanout.{m}.server_rss_per_member_joined"),
            per(joined),
            "bytes",
        );
        figure(
            &format!("fanout.{m}.server_rss_per_member_after"),
            per(done),
            "bytes",
        );
    }
    Ok(())
}
