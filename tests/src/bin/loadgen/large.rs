//! Figure 8: one room of M members where 1 % of them change per second.
//!
//! M members join one room (128 handshakes in flight); once all have joined
//! and the room has been quiet for 1.3 s (a summary comes a second after
//! the last), a driver makes `rate` % of the
//! members per second toggle between idle and active, each change by a
//! member that did not change yet, for `seconds`. Every member counts the
//! bytes and frames it receives meanwhile (pongs aside) and keeps its own
//! idea of how many members are idle: from `summary` counts in a large
//! room, from `user_idle` / `user_active` diffs in a small one. After the
//! last change, the figure is the time until every member's idea is the
//! truth. Server RSS is read after the join, CPU time over the changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Barrier, Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Target};
use crate::report::{figure, process};

/// What the scenario is asked to do.
pub struct Plan {
    pub members: usize,
    /// Percent of the members that change per second.
    pub rate: f64,
    pub seconds: Duration,
    pub server: Option<u32>,
    /// Figure names start with this.
    pub label: String,
}

/// One member's figures.
#[derive(Default)]
struct Seen {
    frames: u64,
    bytes: u64,
    /// From the last change to the right count.
    settled: Duration,
    large: bool,
}

/// A member's idea of how many are idle, from the frames it reads.
#[derive(Default)]
struct Idea {
    large: bool,
    /// From the last large snapshot or summary.
    counted: u64,
    /// `user_idle` minus `user_active` diffs since the changes began.
    net: i64,
}

impl Idea {
    fn read(&mut self, t: &str, changing: bool) {
        if t.starts_with(r#"{"type":"snapshot""#) {
            self.large = t.contains(r#""large":true"#);
        }
        if let Some(idle) = counted_idle(t) {
            self.counted = idle;
        }
        if changing && t.starts_with(r#"{"type":"diffs""#) {
            self.net += t.matches(r#""type":"user_idle""#).count() as i64;
            self.net -= t.matches(r#""type":"user_active""#).count() as i64;
        }
    }

    fn idle(&self) -> i64 {
        if self.large {
            self.counted as i64
        } else {
            self.net
        }
    }
}

/// The `idle` count of a `snapshot` or `summary` with counts.
fn counted_idle(t: &str) -> Option<u64> {
    let at = t.find(r#""counts":{"#)?;
    let rest = &t[at..];
    let idle = rest.find(r#""idle":"#)? + r#""idle":"#.len();
    let digits: String = rest[idle..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads (and discards) until `barrier`, heartbeating; `None` if the socket fails.
async fn drain_until(
    barrier: &Barrier,
    mut ws: Option<conn::Ws>,
    idea: &mut Idea,
) -> Option<conn::Ws> {
    let wait = barrier.wait();
    tokio::pin!(wait);
    let Some(w) = ws.as_mut() else {
        wait.await;
        return None;
    };
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    loop {
        tokio::select! {
            _ = &mut wait => return ws,
            _ = ping.tick() => if w.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                wait.await;
                return None;
            },
            frame = w.next() => match frame {
                Some(Ok(Message::Text(t))) => idea.read(&t, false),
                Some(Ok(_)) => {}
                _ => {
                    wait.await;
                    return None;
                }
            },
        }
    }
}

pub async fn run(target: &Target, sources: usize, plan: Plan) -> Result<()> {
    let m = plan.members;
    let rss = || plan.server.map(|pid| process(pid).0);
    let cpu = || plan.server.map(|pid| process(pid).1);
    let rss0 = rss();
    let room = format!("large-{m}-{}", std::process::id());
    let ready = Arc::new(Barrier::new(m + 1));
    let quiet = Arc::new(Barrier::new(m + 1));
    let opening = Arc::new(Semaphore::new(128));
    // The truth once the changes are over: how many members are idle.
    let (truth_tx, truth_rx) = watch::channel::<Option<(u64, Instant)>>(None);
    let mut pokes = Vec::with_capacity(m);
    let mut tasks = Vec::with_capacity(m);
    let filling = Instant::now();
    for i in 0..m {
        let (target, room, ready, quiet, opening) = (
            target.clone(),
            room.clone(),
            ready.clone(),
            quiet.clone(),
            opening.clone(),
        );
        let (poke_tx, mut poke) = mpsc::channel::<()>(1);
        pokes.push(poke_tx);
        let mut truth = truth_rx.clone();
        let patience = plan.seconds + Duration::from_secs(60);
        tasks.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await.ok();
            let opened = async {
                let mut ws =
                    conn::open(&target, conn::source(i, sources), &format!("l{i}")).await?;
                conn::join(&mut ws, &room).await?;
                anyhow::Ok(ws)
            }
            .await;
            drop(permit);
            let mut idea = Idea::default();
            let failed = opened.as_ref().err().map(|e| format!("{e:#}"));
            let ws = drain_until(&ready, opened.ok(), &mut idea).await;
            // Until a quiet longer than the summary interval (1 s), so only
            // the measured changes count.
            let mut ws = ws;
            if let Some(w) = ws.as_mut() {
                while let Ok(Some(Ok(msg))) =
                    tokio::time::timeout(Duration::from_millis(1_300), w.next()).await
                {
                    if let Message::Text(t) = msg {
                        idea.read(&t, false);
                    }
                }
            }
            let ws = drain_until(&quiet, ws, &mut idea).await;
            let Some(mut ws) = ws else {
                bail!(
                    "member {i}: {}",
                    failed.unwrap_or("lost its socket while the room filled".into())
                );
            };
            let mut seen = Seen::default();
            let mut idle = false;
            let mut ping = tokio::time::interval(Duration::from_secs(20));
            let deadline = tokio::time::sleep(patience);
            tokio::pin!(deadline);
            loop {
                if let Some((want, since)) = *truth.borrow()
                    && idea.idle() == want as i64
                {
                    seen.settled = since.elapsed();
                    seen.large = idea.large;
                    return Ok(seen);
                }
                tokio::select! {
                    Some(()) = poke.recv() => {
                        idle = !idle;
                        ws.send(conn::activity(idle)).await?;
                    }
                    _ = ping.tick() => ws.send(Message::text(r#"{"type":"ping"}"#)).await?,
                    _ = truth.changed() => {}
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(t))) => {
                            if t.as_str() != r#"{"type":"pong"}"# && truth.borrow().is_none() {
                                seen.frames += 1;
                                seen.bytes += t.len() as u64;
                            }
                            idea.read(&t, true);
                        }
                        Some(Ok(_)) => {}
                        _ => bail!("member {i} lost its socket"),
                    },
                    _ = &mut deadline => bail!(
                        "member {i}: counted {} idle, not {:?}, by the deadline",
                        idea.idle(),
                        truth.borrow().map(|t| t.0)
                    ),
                }
            }
        }));
    }
    ready.wait().await;
    let joined = filling.elapsed();
    quiet.wait().await;
    let rss_joined = rss();

    // The changes: every 100 ms, the next members in order, so each
    // change is a different member's first and the truth is their number.
    let per_second = m as f64 * plan.rate / 100.0;
    let start = Instant::now();
    let cpu0 = cpu();
    let mut changed = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while start.elapsed() < plan.seconds {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * per_second) as usize).min(m);
        while changed < due {
            // A member that failed has no receiver: its change is not made.
            let _ = pokes[changed].try_send(());
            changed += 1;
        }
    }
    let window = start.elapsed();
    let cpu1 = cpu();
    let _ = truth_tx.send(Some((changed as u64, Instant::now())));

    let (mut slowest, mut frames, mut bytes, mut failed, mut large) = (Duration::ZERO, 0, 0, 0, 0);
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => {
                slowest = slowest.max(s.settled);
                frames += s.frames;
                bytes += s.bytes;
                large += usize::from(s.large);
            }
            Ok(Err(e)) => {
                failed += 1;
                if failed == 1 {
                    eprintln!("large: {e:#}");
                }
            }
            Err(_) => failed += 1,
        }
    }
    let name = |what: &str| format!("{}.{m}.{what}", plan.label);
    let per_member_second = |x: u64| x as f64 / m as f64 / window.as_secs_f64();
    figure(&name("join"), joined.as_secs_f64() * 1000.0, "ms");
    figure(
        &name("changes_per_second"),
        changed as f64 / window.as_secs_f64(),
        "changes/s",
    );
    figure(
        &name("bytes_per_member_per_second"),
        per_member_second(bytes),
        "bytes",
    );
    figure(
        &name("frames_per_member_per_second"),
        per_member_second(frames),
        "frames",
    );
    figure(
        &name("counts_right_everywhere"),
        slowest.as_secs_f64() * 1000.0,
        "ms",
    );
    figure(&name("members_in_large_mode"), large as f64, "members");
    figure(&name("failed_members"), failed as f64, "members");
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        figure(
            &name("server_cpu"),
            (c1 - c0) / window.as_secs_f64() * 100.0,
            "% of a core",
        );
    }
    if let (Some(r0), Some(r)) = (rss0, rss_joined) {
        figure(
            &name("server_rss_per_member_joined"),
            r.saturating_sub(r0) as f64 / m as f64,
            "bytes",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_count_is_read_from_counts_only() {
        let t = r#"{"type":"summary","room":"r","counts":{"online":10,"active":7,"idle":3},"joined":[{"user":"idle"}]}"#;
        assert_eq!(counted_idle(t), Some(3));
        assert_eq!(counted_idle(r#"{"type":"diffs","diffs":[]}"#), None);
    }
}
