//! A rolling restart seen from the clients (issue 32): users on every node
//! of a cluster, in rooms that span the nodes, each holding its socket as
//! the SDK does. When its node closes it (1001, a graceful restart), the
//! user reconnects to the same address with its resume token, with the
//! core's backoff (50 ms doubling to 1 s, full jitter), and joins its room
//! again. An observer per room on every node counts the `user_disconnected`
//! diffs it sees about users of other nodes: each is a flap, since every
//! user comes back. `cargo xtask bench --rolling` restarts the nodes one by
//! one meanwhile.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::SinkExt;
use presence_server::presence_core::client::Backoff;
use tokio::sync::oneshot;

use crate::conn::{self, Target, Ws};
use crate::report::{figure, percentile};

/// Users per node at most (each is a socket of this process).
const MAX_USERS: usize = 5_000;
const MAX_SECONDS: u64 = 600;
/// Rooms at most (each has an observer on every node).
const MAX_ROOMS: usize = 1_000;
/// Connections opened at once while filling.
const CONNECTING: usize = 64;
/// The SDK's ping interval.
const PING: Duration = Duration::from_secs(25);

/// What the users and observers saw.
#[derive(Default)]
struct Seen {
    /// Reconnects welcomed as resumed, and as new connections.
    resumed: u64,
    fresh: u64,
    /// Milliseconds from a socket's end to the welcome of its successor.
    away_ms: Vec<u64>,
    /// `user_disconnected` diffs about a user of another node than the
    /// observer's, and the users they were about.
    flaps: u64,
    flapped: HashSet<String>,
    /// Sockets that could not be had again before the end.
    lost: u64,
}

type Shared = Arc<Mutex<Seen>>;

pub async fn run(
    urls: &[String],
    users_per_node: usize,
    rooms: usize,
    seconds: u64,
    sources: usize,
) -> Result<()> {
    if !(1..=MAX_USERS).contains(&users_per_node) {
        bail!("--users-per-node is 1 to {MAX_USERS}");
    }
    if !(1..=MAX_SECONDS).contains(&seconds) || !(1..=MAX_ROOMS).contains(&rooms) || urls.len() < 2
    {
        bail!("--seconds is 1 to {MAX_SECONDS}, --rooms 1 to {MAX_ROOMS}, --urls at least 2");
    }
    let targets: Vec<Target> = urls
        .iter()
        .map(|u| Target::parse(u))
        .collect::<Result<_>>()?;
    let end = Instant::now() + Duration::from_secs(seconds);
    let seen: Shared = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut ready = Vec::new();
    for (k, target) in targets.iter().enumerate() {
        for r in 0..rooms {
            let m = Member {
                target: target.clone(),
                from: conn::source(tasks.len(), sources),
                name: format!("obs{k}-{r}"),
                room: format!("rr{r}"),
                mine: Some(format!("n{k}-")),
            };
            let (tx, rx) = oneshot::channel();
            ready.push(rx);
            tasks.push(tokio::spawn(hold(m, end, seen.clone(), tx)));
        }
    }
    // Observers are in their rooms before the first user comes.
    for rx in ready {
        let _ = rx.await;
    }
    // Fill in waves: a wave's users are connected before the next starts.
    let users: Vec<(usize, usize)> = (0..users_per_node)
        .flat_map(|i| (0..targets.len()).map(move |k| (k, i)))
        .collect();
    for wave in users.chunks(CONNECTING) {
        let mut ready = Vec::new();
        for &(k, i) in wave {
            let m = Member {
                target: targets[k].clone(),
                from: conn::source(tasks.len(), sources),
                name: format!("n{k}-u{i}"),
                room: format!("rr{}", i % rooms),
                mine: None,
            };
            let (tx, rx) = oneshot::channel();
            ready.push(rx);
            tasks.push(tokio::spawn(hold(m, end, seen.clone(), tx)));
        }
        for rx in ready {
            let _ = rx.await;
        }
    }
    eprintln!(
        "rolling: {} users and {} observers connected in {:.1} s",
        users.len(),
        targets.len() * rooms,
        started.elapsed().as_secs_f64()
    );
    // The runner restarts the nodes after this line.
    eprintln!("rolling: ready");
    for t in tasks {
        let _ = t.await;
    }
    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut away = s.away_ms.clone();
    away.sort_unstable();
    figure("rolling.users", users.len() as f64, "users");
    figure("rolling.reconnects_resumed", s.resumed as f64, "sockets");
    figure("rolling.reconnects_fresh", s.fresh as f64, "sockets");
    figure("rolling.away.p50", percentile(&away, 50.0), "ms");
    figure("rolling.away.p99", percentile(&away, 99.0), "ms");
    figure(
        "rolling.away.max",
        away.last().copied().unwrap_or(0) as f64,
        "ms",
    );
    figure("rolling.flaps", s.flaps as f64, "offline diffs seen");
    figure("rolling.flapped_users", s.flapped.len() as f64, "users");
    figure("rolling.lost", s.lost as f64, "sockets");
    Ok(())
}

/// One socket's owner: a user, or an observer (`mine`: the prefix of its
/// own node's users, whose offline diffs it does not count).
struct Member {
    target: Target,
    from: std::net::IpAddr,
    name: String,
    room: String,
    mine: Option<String>,
}

/// Holds the member's socket in its room until `end`, coming back after
/// every close; tells `ready` once its first socket is in the room.
async fn hold(m: Member, end: Instant, seen: Shared, ready: oneshot::Sender<()>) {
    let first = first_socket(&m).await;
    let _ = ready.send(());
    match first {
        Ok((ws, token)) => keep(&m, end, &seen, ws, token).await,
        Err(e) => {
            eprintln!("rolling: {} never connected: {e}", m.name);
            seen.lock().unwrap_or_else(|p| p.into_inner()).lost += 1;
        }
    }
}

async fn first_socket(m: &Member) -> Result<(Ws, String)> {
    let hello = r#"{"type":"hello","v":1}"#;
    let (mut ws, welcome) = conn::open_with(&m.target, m.from, &m.name, hello).await?;
    conn::join(&mut ws, &m.room).await?;
    Ok((ws, resume_token(&welcome)?))
}

fn resume_token(welcome: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(welcome)?;
    match v["resume"].as_str() {
        Some(t) => Ok(t.to_owned()),
        None => bail!("no resume token in {welcome}"),
    }
}

async fn keep(m: &Member, end: Instant, seen: &Shared, mut ws: Ws, mut token: String) {
    let end_at = tokio::time::Instant::from_std(end);
    let seed = m
        .name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1), seed);
    loop {
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING, PING);
        // Until the socket ends or the run does.
        loop {
            let frame = tokio::select! {
                f = conn::listen(&mut ws, &mut ping) => f,
                () = tokio::time::sleep_until(end_at) => {
                    let _ = ws.close(None).await;
                    return;
                }
            };
            let Some(text) = frame else { break };
            if let Some(mine) = &m.mine {
                note_flaps(&text, mine, &m.name, seen);
            }
        }
        let gone = Instant::now();
        // Answer the close, as a browser does (tungstenite queued the
        // reply): the node need not wait its close timeout for it.
        let _ = ws.flush().await;
        // Back, with the token, until the run ends.
        let (next, welcome) = loop {
            if Instant::now() >= end {
                seen.lock().unwrap_or_else(|p| p.into_inner()).lost += 1;
                return;
            }
            tokio::time::sleep(backoff.next_delay()).await;
            let hello = format!(r#"{{"type":"hello","v":1,"resume":"{token}"}}"#);
            let Ok((mut next, welcome)) = conn::open_with(&m.target, m.from, &m.name, &hello).await
            else {
                continue;
            };
            if conn::join(&mut next, &m.room).await.is_ok() {
                break (next, welcome);
            }
        };
        backoff.reset();
        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
        s.away_ms
            .push(u64::try_from(gone.elapsed().as_millis()).unwrap_or(u64::MAX));
        if welcome.contains(r#""resumed":true"#) {
            s.resumed += 1;
        } else {
            s.fresh += 1;
        }
        drop(s);
        if let Ok(t) = resume_token(&welcome) {
            token = t;
        }
        ws = next;
    }
}

/// Counts the offline diffs in `text` about users not of the observer's node.
fn note_flaps(text: &str, mine: &str, observer: &str, seen: &Shared) {
    if !text.contains("user_disconnected") {
        return;
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    for d in v["diffs"].as_array().into_iter().flatten() {
        let Some(user) = d["user"].as_str() else {
            continue;
        };
        if d["type"] == "user_disconnected" && !user.starts_with(mine) && !user.starts_with("obs") {
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            if s.flaps < 20 {
                eprintln!("rolling: {observer} saw {user} go");
            }
            s.flaps += 1;
            s.flapped.insert(user.to_owned());
        }
    }
}
