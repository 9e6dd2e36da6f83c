//! The cluster benchmark: N nodes, each hosting the same rooms-per-node with
//! the same actors-per-room, so a node's own interest is fixed whatever N is.
//! Each room's observer sits on the *next* node, so every observed change
//! crosses the bus. Actors flip between active and idle at a fixed total
//! rate, interleaved over nodes and rooms; the observers timestamp each flip.
//!
//! One flip per actor is in flight at a time: the driver gives each change
//! to the next actor whose last flip was observed (or written off as lost),
//! so coalescing two flips of one user in a batch window cannot make a change
//! vanish or be matched to the wrong send.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Target};
use crate::probe::{Probe, Sample};
use crate::report::{figure, percentile};

/// The shape of one run.
pub struct Plan {
    pub nodes: Vec<Target>,
    /// Changes per second, over all nodes.
    pub rate: u32,
    pub seconds: Duration,
    pub rooms_per_node: usize,
    pub actors: usize,
    /// A change not observed within this is lost.
    pub lost_after: Duration,
    /// Redis servers whose CPU time to sample around the window.
    pub redis: Vec<std::net::SocketAddr>,
    /// Figure names start with this.
    pub label: String,
    /// With a service key, the first node's event stream is read too.
    pub feed_key: Option<String>,
}

/// What an observer saw: actor index, idle or not, µs since the epoch.
type Seen = (usize, bool, u64);

struct Actor {
    cmd: mpsc::Sender<bool>,
    idle: bool,
    /// The flip in flight: when it was sent (µs since the epoch).
    pending: Option<u64>,
}

const HANDSHAKES_IN_FLIGHT: usize = 32;
/// Like a client's heartbeat, so a long set-up does not time sockets out.
const PING: Duration = Duration::from_secs(20);
/// Upper bound on a run's measuring time.
const MAX_SECONDS: u64 = 120;

pub async fn run(plan: Plan) -> Result<()> {
    let n = plan.nodes.len();
    anyhow::ensure!(n >= 2, "the cluster scenario needs two nodes or more");
    anyhow::ensure!(
        plan.seconds.as_secs() <= MAX_SECONDS,
        "at most {MAX_SECONDS} s"
    );
    let rooms = n * plan.rooms_per_node;
    let total = rooms * plan.actors;
    let tag = format!("c{}", std::process::id());
    let epoch = Instant::now();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Seen>();
    let (fed_tx, mut fed_rx) = mpsc::unbounded_channel::<Seen>();
    if let Some(key) = &plan.feed_key {
        spawn_feed_reader(&plan.nodes[0], key, format!("{tag}a"), epoch, fed_tx).await?;
    } else {
        drop(fed_tx);
    }
    let mut feed = Feed::default();

    let mut opening = JoinSet::new();
    let gate = std::sync::Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT));
    for g in 0..rooms {
        let home = g / plan.rooms_per_node;
        let room = format!("{tag}-r{g}");
        // The observer, on the next node.
        let (target, user, room2, gate2) = (
            plan.nodes[(home + 1) % n].clone(),
            format!("{tag}o{g}"),
            room.clone(),
            gate.clone(),
        );
        opening.spawn(async move {
            let _permit = gate2.acquire_owned().await?;
            let ws = member(&target, &user, &room2).await?;
            anyhow::Ok((None, ws))
        });
        for a in 0..plan.actors {
            let idx = g * plan.actors + a;
            let (target, user, room, gate) = (
                plan.nodes[home].clone(),
                format!("{tag}a{idx}"),
                room.clone(),
                gate.clone(),
            );
            opening.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let ws = member(&target, &user, &room).await?;
                anyhow::Ok((Some(idx), ws))
            });
        }
    }
    let set_up = Instant::now();
    let mut slots: Vec<Option<mpsc::Sender<bool>>> = (0..total).map(|_| None).collect();
    while let Some(opened) = opening.join_next().await {
        let (idx, ws) = opened??;
        match idx {
            Some(idx) => slots[idx] = Some(spawn_actor(ws)),
            None => spawn_observer(ws, format!("{tag}a"), epoch, seen_tx.clone()),
        }
    }
    drop(seen_tx);
    let connections = total + rooms;
    figure(
        &format!("{}.connect", plan.label),
        set_up.elapsed().as_secs_f64() * 1000.0,
        &format!("ms for {connections} connections"),
    );
    let mut actors: Vec<Actor> = slots
        .into_iter()
        .map(|cmd| Actor {
            cmd: cmd.expect("every actor opened"),
            idle: false,
            pending: None,
        })
        .collect();
    let order = interleaved(n, plan.rooms_per_node, plan.actors);

    // Let the join diffs pass, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while seen_rx.try_recv().is_ok() {}
    while fed_rx.try_recv().is_ok() {}
    feed.pending = vec![None; total];
    let probe = Probe {
        nodes: plan.nodes.iter().map(|t| t.addr).collect(),
        redis: plan.redis.clone(),
    };
    let before = probe.spawn().await?.context("probe before")?;

    let mut tally = Tally::default();
    let lost_us = plan.lost_after.as_micros() as u64;
    let start = Instant::now();
    let mut cursor = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut sweep = tokio::time::interval(Duration::from_millis(100));
    while start.elapsed() < plan.seconds {
        tokio::select! {
            _ = tick.tick() => {
                let due = (start.elapsed().as_secs_f64() * f64::from(plan.rate)) as u64;
                while tally.offered < due {
                    tally.offered += 1;
                    let now = epoch.elapsed().as_micros() as u64;
                    match free_actor(&actors, &order, cursor) {
                        Some(k) => {
                            cursor = (k + 1) % order.len();
                            let actor = &mut actors[order[k]];
                            // A full queue means that socket is backed up: not sent.
                            if actor.cmd.try_send(!actor.idle).is_ok() {
                                actor.idle = !actor.idle;
                                actor.pending = Some(now);
                                feed.sent(order[k], actor.idle, now);
                                tally.sent += 1;
                            } else {
                                tally.skipped += 1;
                            }
                        }
                        None => tally.skipped += 1,
                    }
                }
            }
            _ = sweep.tick() => tally.expire(&mut actors, epoch, lost_us),
            seen = seen_rx.recv() => match seen {
                Some(seen) => tally.observe(&mut actors, seen),
                None => break,
            },
            Some(fed) = fed_rx.recv() => feed.observe(fed),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = probe.spawn();
    // Wait for what is in flight, at most the loss bound.
    let drain = tokio::time::sleep(plan.lost_after + Duration::from_millis(100));
    tokio::pin!(drain);
    while actors.iter().any(|a| a.pending.is_some()) {
        tokio::select! {
            _ = &mut drain => break,
            _ = sweep.tick() => tally.expire(&mut actors, epoch, lost_us),
            seen = seen_rx.recv() => match seen {
                Some(seen) => tally.observe(&mut actors, seen),
                None => break,
            },
        }
    }
    tally.lost += actors.iter().filter(|a| a.pending.is_some()).count() as u64;
    if plan.feed_key.is_some() {
        // The stream's stragglers, within the same loss bound.
        let drain = tokio::time::sleep(plan.lost_after);
        tokio::pin!(drain);
        while feed.pending.iter().any(Option::is_some) {
            tokio::select! {
                _ = &mut drain => break,
                fed = fed_rx.recv() => match fed {
                    Some(fed) => feed.observe(fed),
                    None => break,
                },
            }
        }
        feed.late += feed.pending.iter().filter(|p| p.is_some()).count() as u64;
    }
    let after = after.await?.context("probe after")?;
    report(&plan, elapsed, &mut tally, &before, &after);
    if plan.feed_key.is_some() {
        let l = &plan.label;
        feed.latencies.sort_unstable();
        let ms = |p| percentile(&feed.latencies, p) / 1000.0;
        figure(&format!("{l}.stream_p50"), ms(50.0), "ms");
        figure(&format!("{l}.stream_p99"), ms(99.0), "ms");
        figure(&format!("{l}.stream_max"), ms(100.0), "ms");
        figure(
            &format!("{l}.stream_delivered_rate"),
            feed.latencies.len() as f64 / elapsed,
            "events/s",
        );
        figure(
            &format!("{l}.stream_late"),
            feed.late as f64,
            "changes not told before the actor's next one",
        );
        figure(&format!("{l}.stream_stray"), feed.stray as f64, "events");
    }
    Ok(())
}

/// The changes as the event stream tells them: one per flip, matched by
/// actor and direction.
#[derive(Default)]
struct Feed {
    /// Per actor: the flip not yet seen in the stream (idle or not, sent at).
    pending: Vec<Option<(bool, u64)>>,
    latencies: Vec<u64>,
    /// Flips the stream had not told when the actor's next flip went out
    /// (told later, they count as stray), or not within the loss bound
    /// after the run.
    late: u64,
    stray: u64,
}

impl Feed {
    fn sent(&mut self, idx: usize, idle: bool, at: u64) {
        if let Some(p) = self.pending.get_mut(idx)
            && p.replace((idle, at)).is_some()
        {
            self.late += 1;
        }
    }

    fn observe(&mut self, (idx, idle, at): Seen) {
        match self.pending.get_mut(idx) {
            Some(p) if p.is_some_and(|(i, _)| i == idle) => {
                let (_, sent) = p.take().unwrap_or((idle, at));
                self.latencies.push(at.saturating_sub(sent));
            }
            _ => self.stray += 1,
        }
    }
}

/// Reads `GET /v1/events` (SSE over HTTP/1.0: the body is the raw stream)
/// and reports each actor's `user_idle` / `user_active`, timestamped on
/// arrival. Returns once the stream is open.
async fn spawn_feed_reader(
    target: &Target,
    key: &str,
    actor_prefix: String,
    epoch: Instant,
    seen: mpsc::UnboundedSender<Seen>,
) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut tcp = tokio::net::TcpStream::connect(target.addr)
        .await
        .context("the event stream's node")?;
    let req = format!("GET /v1/events HTTP/1.0\r\nHost: l\r\nAuthorization: Bearer {key}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut lines = BufReader::new(tcp).lines();
    let status = lines.next_line().await?.unwrap_or_default();
    anyhow::ensure!(status.contains(" 200 "), "GET /v1/events: {status}");
    while let Some(line) = lines.next_line().await? {
        if line.is_empty() {
            break;
        }
    }
    tokio::spawn(async move {
        let mut kind = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(k) = line.strip_prefix("event:") {
                kind = k.trim().to_owned();
                continue;
            }
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Some(idle) = idle_of(&kind) else {
                continue;
            };
            let at = epoch.elapsed().as_micros() as u64;
            let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            if v["global"] != true {
                continue;
            }
            if let Some(idx) = actor(&v, &actor_prefix)
                && seen.send((idx, idle, at)).is_err()
            {
                return;
            }
        }
    });
    Ok(())
}

/// Counts of one run.
#[derive(Default)]
struct Tally {
    offered: u64,
    sent: u64,
    skipped: u64,
    lost: u64,
    /// Observations that matched no flip in flight (late after being written off, or repeated).
    stray: u64,
    latencies: Vec<u64>,
}

impl Tally {
    fn observe(&mut self, actors: &mut [Actor], (idx, idle, at): Seen) {
        match actors.get_mut(idx) {
            Some(a) if a.idle == idle && a.pending.is_some() => {
                let sent = a.pending.take().unwrap_or(at);
                self.latencies.push(at.saturating_sub(sent));
            }
            _ => self.stray += 1,
        }
    }

    fn expire(&mut self, actors: &mut [Actor], epoch: Instant, lost_us: u64) {
        let now = epoch.elapsed().as_micros() as u64;
        for a in actors {
            if a.pending
                .is_some_and(|sent| now.saturating_sub(sent) > lost_us)
            {
                a.pending = None;
                self.lost += 1;
            }
        }
    }
}

fn report(plan: &Plan, elapsed: f64, t: &mut Tally, before: &Sample, after: &Sample) {
    let l = &plan.label;
    t.latencies.sort_unstable();
    let ms = |p| percentile(&t.latencies, p) / 1000.0;
    let delivered = t.latencies.len() as f64;
    figure(&format!("{l}.nodes"), plan.nodes.len() as f64, "nodes");
    figure(
        &format!("{l}.offered_rate"),
        t.offered as f64 / elapsed,
        "changes/s",
    );
    figure(
        &format!("{l}.delivered_rate"),
        delivered / elapsed,
        "changes/s",
    );
    figure(&format!("{l}.p50"), ms(50.0), "ms");
    figure(&format!("{l}.p99"), ms(99.0), "ms");
    figure(&format!("{l}.max"), ms(100.0), "ms");
    figure(&format!("{l}.lost"), t.lost as f64, "changes");
    figure(&format!("{l}.skipped"), t.skipped as f64, "changes");
    figure(&format!("{l}.stray"), t.stray as f64, "observations");
    let window = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    figure(
        &format!("{l}.host_cpu"),
        after.host_busy_since(before),
        "% of the machine busy",
    );
    if !plan.redis.is_empty() {
        let cpu = after.redis_cpu - before.redis_cpu;
        figure(
            &format!("{l}.redis_cpu"),
            cpu / window * 100.0,
            "% of one core",
        );
        figure(
            &format!("{l}.redis_cpu_per_change"),
            cpu / delivered.max(1.0) * 1e6,
            "µs",
        );
    }
    let per_node = |i: usize| -> Vec<f64> {
        before
            .nodes
            .iter()
            .zip(&after.nodes)
            .map(|(b, a)| {
                let (b, a) = if i == 0 { (b.0, a.0) } else { (b.1, a.1) };
                (a - b) / window
            })
            .collect()
    };
    for (i, what, unit) in [(0, "bytes_in", "bytes/s"), (1, "messages_in", "messages/s")] {
        let v = per_node(i);
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        let max = v.iter().copied().fold(0.0, f64::max);
        figure(
            &format!("{l}.node_{what}.mean"),
            mean,
            &format!("{unit} per node"),
        );
        figure(
            &format!("{l}.node_{what}.max"),
            max,
            &format!("{unit} per node"),
        );
    }
}

/// Whether an event kind is an actor's flip to idle (`Some(true)`) or to
/// active (`Some(false)`).
fn idle_of(kind: &str) -> Option<bool> {
    match kind {
        "user_idle" => Some(true),
        "user_active" => Some(false),
        _ => None,
    }
}

/// The actor index an event is about, if it is about an actor.
fn actor(event: &Value, prefix: &str) -> Option<usize> {
    event["user"].as_str()?.strip_prefix(prefix)?.parse().ok()
}

/// Actor indices in driving order: consecutive changes go to different
/// nodes, then different rooms, so every node sees the same rate.
fn interleaved(nodes: usize, rooms_per_node: usize, actors: usize) -> Vec<usize> {
    let per_node = rooms_per_node * actors;
    (0..nodes * per_node)
        .map(|k| {
            let (node, j) = (k % nodes, k / nodes);
            let (room, actor) = (j % rooms_per_node, j / rooms_per_node);
            (node * rooms_per_node + room) * actors + actor
        })
        .collect()
}

/// The first position from `cursor` on whose actor has no flip in flight.
fn free_actor(actors: &[Actor], order: &[usize], cursor: usize) -> Option<usize> {
    (0..order.len())
        .map(|i| (cursor + i) % order.len())
        .find(|&k| actors[order[k]].pending.is_none())
}

async fn member(target: &Target, user: &str, room: &str) -> Result<conn::Ws> {
    let mut ws = conn::open(target, conn::source(0, 1), user)
        .await
        .with_context(|| format!("{user} on {}", target.addr))?;
    conn::join(&mut ws, room)
        .await
        .with_context(|| format!("{user} joining {room}"))?;
    Ok(ws)
}

/// An actor's socket: sends the flips it is told, reads (and drops) the rest.
fn spawn_actor(mut ws: conn::Ws) -> mpsc::Sender<bool> {
    let (tx, mut rx) = mpsc::channel::<bool>(4);
    tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING);
        ping.tick().await;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(idle) => if ws.send(conn::activity(idle)).await.is_err() { return },
                    None => return,
                },
                _ = ping.tick() => if ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() { return },
                frame = ws.next() => if !matches!(frame, Some(Ok(_))) { return },
            }
        }
    });
    tx
}

/// An observer's socket: every `user_idle` / `user_active` of an actor,
/// timestamped on arrival.
fn spawn_observer(
    mut ws: conn::Ws,
    actor_prefix: String,
    epoch: Instant,
    seen: mpsc::UnboundedSender<Seen>,
) {
    tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING);
        ping.tick().await;
        while let Some(t) = conn::listen(&mut ws, &mut ping).await {
            if !t.starts_with(r#"{"type":"diffs""#) {
                continue;
            }
            let at = epoch.elapsed().as_micros() as u64;
            let Ok(v) = serde_json::from_str::<Value>(&t) else {
                continue;
            };
            for d in v["diffs"].as_array().into_iter().flatten() {
                let Some(idle) = d["type"].as_str().and_then(idle_of) else {
                    continue;
                };
                if let Some(idx) = actor(d, &actor_prefix)
                    && seen.send((idx, idle, at)).is_err()
                {
                    return;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::interleaved;

    #[test]
    fn driving_order_covers_every_actor_once_and_alternates_nodes() {
        let order = interleaved(3, 2, 4);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..24).collect::<Vec<_>>());
        // Actor idx lives on node idx / (rooms_per_node * actors).
        let nodes: Vec<usize> = order.iter().take(6).map(|i| i / 8).collect();
        assert_eq!(nodes, [0, 1, 2, 0, 1, 2]);
    }
}
