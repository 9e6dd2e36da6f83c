//! Issue 31: the ranked presence query and read receipts.
//!
//! `users` WebSockets connect (dev auth), in four states by index (active,
//! idle `no_input`, idle `blurred`, idle `hidden`); each joins one room,
//! sends `read` with its own marker (user i: i + 1) and leaves it again (a
//! receipt outlives its reader's membership), so the room ends with `users`
//! distinct markers. Then, over one keep-alive HTTP/1.1 connection:
//!
//! * `queries` times `POST /v1/presence/bulk` with `ids` ids (the connected
//!   users and unknown ids, shuffled), `order: present_first`, pages of
//!   `limit`, following `next` to the end. Every query is checked: each id
//!   exactly once, the connected first (active, then idle), the rest
//!   offline. A failed check fails the run.
//! * `queries` times `GET /v1/rooms/{room}/receipts?at=<marker>` on that
//!   room (count checked), and on `--seeded-room` (markers 1..=N written
//!   straight into Redis beforehand) if given.
//!
//! With several nodes the users are on all nodes but the last, which is
//! asked (it holds none of them).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Target};
use crate::http::Http;
use crate::report::{figure, percentile};

pub struct Plan {
    pub nodes: Vec<Target>,
    pub sources: usize,
    pub users: usize,
    pub ids: usize,
    pub limit: usize,
    pub queries: usize,
    pub key: String,
    pub label: String,
    /// A room whose markers 1..=N were seeded beforehand.
    pub seeded: Option<(String, u64)>,
    /// Readers in all (at least `users`): the others connect, join, read and close.
    pub readers: usize,
}

const MAX_USERS: usize = 10_000;
const MAX_READERS: usize = 200_000;
const MAX_IDS: usize = 10_000;
const MAX_QUERIES: usize = 1_000;
const MAX_PAGES: usize = 200;
const HANDSHAKES_IN_FLIGHT: usize = 64;
const SETTLE: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const HOLD: Duration = Duration::from_secs(900);
const STATES: [Option<&str>; 4] = [None, Some("no_input"), Some("blurred"), Some("hidden")];

pub async fn run(plan: Plan) -> Result<()> {
    let n = plan.nodes.len();
    ensure!(n >= 1, "no node");
    ensure!(
        (1..=MAX_USERS).contains(&plan.users),
        "1 to {MAX_USERS} users"
    );
    ensure!(
        (plan.users..=MAX_IDS).contains(&plan.ids),
        "ids from users to {MAX_IDS}"
    );
    ensure!((1..=1000).contains(&plan.limit), "limit 1 to 1000");
    ensure!(
        (1..=MAX_QUERIES).contains(&plan.queries),
        "1 to {MAX_QUERIES} queries"
    );
    let tag = format!("k{}", std::process::id());
    let room = format!("{tag}-receipts");
    let names: Arc<Vec<String>> = Arc::new((0..plan.users).map(|i| format!("{tag}u{i}")).collect());
    let l = &plan.label;

    // The users: on every node but the asked one (with one node, on it).
    let holders = if n > 1 { n - 1 } else { 1 };
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT));
    let (tx, mut rx) = mpsc::channel::<Result<()>>(1024);
    for i in 0..plan.users {
        let (target, gate, tx, names, room) = (
            plan.nodes[i % holders].clone(),
            gate.clone(),
            tx.clone(),
            names.clone(),
            room.clone(),
        );
        let from = conn::source(i, plan.sources);
        tokio::spawn(async move {
            let Ok(permit) = gate.acquire_owned().await else {
                return;
            };
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                set_up(&target, from, &names[i], &room, i),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("set-up over 60 s")));
            drop(permit);
            match r {
                Ok(mut ws) => {
                    let _ = tx.send(Ok(())).await;
                    let end = tokio::time::Instant::now() + HOLD;
                    let mut ping = tokio::time::interval(Duration::from_secs(20));
                    loop {
                        tokio::select! {
                            _ = ping.tick() => if ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() { return },
                            f = ws.next() => if !matches!(f, Some(Ok(_))) { return },
                            _ = tokio::time::sleep_until(end) => return,
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.context(format!("user {i}")))).await;
                }
            }
        });
    }
    drop(tx);
    for _ in 0..plan.users {
        match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => bail!("connection failed: {e:#}"),
            _ => bail!("set-up stalled"),
        }
    }
    figure(
        &format!("{l}.connect"),
        started.elapsed().as_secs_f64() * 1000.0,
        &format!(
            "ms for {} users (connect, state, join, read, leave)",
            plan.users
        ),
    );
    // Short-lived readers: markers users + 1 ..= readers.
    ensure!(
        (plan.users..=MAX_READERS).contains(&plan.readers),
        "readers from users to {MAX_READERS}"
    );
    if plan.readers > plan.users {
        let t = Instant::now();
        let (tx, mut rx) = mpsc::channel::<Result<()>>(1024);
        for i in plan.users..plan.readers {
            let (target, gate, tx, room) = (
                plan.nodes[i % holders].clone(),
                gate.clone(),
                tx.clone(),
                room.clone(),
            );
            let (from, name) = (conn::source(i, plan.sources), format!("{tag}r{i}"));
            tokio::spawn(async move {
                let Ok(_permit) = gate.acquire_owned().await else {
                    return;
                };
                let r = tokio::time::timeout(Duration::from_secs(60), async {
                    let mut ws = conn::open(&target, from, &name).await?;
                    conn::join(&mut ws, &room).await?;
                    ws.send(Message::text(format!(
                        r#"{{"type":"read","room":"{room}","marker":{}}}"#,
                        i + 1
                    )))
                    .await?;
                    ws.send(Message::text(r#"{"type":"leaving"}"#)).await?;
                    ws.close(None).await?;
                    Ok::<_, anyhow::Error>(())
                })
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("reader over 60 s")));
                let _ = tx.send(r).await;
            });
        }
        drop(tx);
        for _ in plan.users..plan.readers {
            match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(e))) => bail!("reader failed: {e:#}"),
                _ => bail!("readers stalled"),
            }
        }
        figure(
            &format!("{l}.readers"),
            t.elapsed().as_secs_f64() * 1000.0,
            &format!(
                "ms for {} short-lived readers (connect, join, read, close)",
                plan.readers - plan.users
            ),
        );
    }
    tokio::time::sleep(SETTLE).await;

    let asked = plan.nodes[n - 1].addr;
    let mut http = Http::connect(asked).await?;

    // The ids: the users and unknown ones, in a fixed shuffled order.
    let mut ids: Vec<String> = names.iter().cloned().collect();
    ids.extend((plan.users..plan.ids).map(|i| format!("{tag}x{i}")));
    let len = ids.len();
    let mut order: Vec<usize> = (0..len).collect();
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    for k in (1..len).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        order.swap(k, (s % (k as u64 + 1)) as usize);
    }
    let ids: Vec<String> = order.into_iter().map(|k| ids[k].clone()).collect();
    let known: HashSet<&str> = names.iter().map(String::as_str).collect();

    let (mut whole, mut pages, mut first_pages) = (Vec::new(), Vec::new(), Vec::new());
    let mut page_count = 0;
    for q in 0..plan.queries {
        let t0 = Instant::now();
        let mut seen: HashSet<String> = HashSet::with_capacity(len);
        let mut ranks: Vec<u8> = Vec::with_capacity(len);
        let mut after = Value::Null;
        let mut count = 0;
        loop {
            ensure!(count < MAX_PAGES, "query {q}: over {MAX_PAGES} pages");
            let mut body = json!({"users": ids, "order": "present_first", "limit": plan.limit});
            if !after.is_null() {
                body["after"] = after.clone();
            }
            let body = serde_json::to_vec(&body)?;
            let tp = Instant::now();
            let (status, answer) = tokio::time::timeout(
                REQUEST_TIMEOUT,
                http.post("/v1/presence/bulk", &plan.key, &body),
            )
            .await
            .context("bulk timed out")??;
            let took = tp.elapsed().as_micros() as u64;
            ensure!(
                status == 200,
                "bulk: {status} {}",
                String::from_utf8_lossy(&answer)
            );
            let v: Value = serde_json::from_slice(&answer)?;
            if count == 0 {
                first_pages.push(took);
            }
            pages.push(took);
            count += 1;
            let users = v["users"].as_array().context("no users")?;
            ensure!(
                users.len() <= plan.limit,
                "a page of {} over the limit",
                users.len()
            );
            for u in users {
                let id = u["user"].as_str().context("view without user")?.to_string();
                let state = u["state"].as_str().unwrap_or("");
                ranks.push(match state {
                    "active" => 0,
                    "idle" => 1,
                    _ => 2,
                });
                if !seen.insert(id.clone()) {
                    bail!("query {q}: {id} listed twice");
                }
            }
            after = v["next"].clone();
            if after.is_null() {
                break;
            }
        }
        whole.push(t0.elapsed().as_micros() as u64);
        page_count = count;
        ensure!(seen.len() == len, "query {q}: {} ids of {len}", seen.len());
        ensure!(
            ranks.windows(2).all(|w| w[0] <= w[1]),
            "query {q}: not active, idle, offline in order"
        );
        let present = ranks.iter().filter(|&&r| r < 2).count();
        ensure!(
            present == plan.users,
            "query {q}: {present} present, expected {}",
            plan.users
        );
        ensure!(seen.iter().filter(|id| known.contains(id.as_str())).count() == plan.users);
    }
    let ms = |v: &mut Vec<u64>, p: f64| {
        v.sort_unstable();
        percentile(v, p) / 1000.0
    };
    let desc = format!(
        "{len} ids ({} connected), pages of {}, {page_count} pages",
        plan.users, plan.limit
    );
    figure(
        &format!("{l}.query_p50"),
        ms(&mut whole, 50.0),
        &format!("ms per full query, {desc}"),
    );
    figure(
        &format!("{l}.query_p99"),
        ms(&mut whole, 99.0),
        "ms per full query",
    );
    figure(
        &format!("{l}.page_p50"),
        ms(&mut pages, 50.0),
        "ms per page",
    );
    figure(
        &format!("{l}.page_p99"),
        ms(&mut pages, 99.0),
        "ms per page",
    );
    figure(
        &format!("{l}.first_page_p50"),
        ms(&mut first_pages, 50.0),
        "ms for page 1",
    );
    figure(
        &format!("{l}.queries_checked"),
        plan.queries as f64,
        "queries, each id exactly once",
    );

    let markers = plan.readers as u64;
    receipts(&mut http, &plan, &room, markers, "receipts").await?;
    if let Some((seeded, n)) = &plan.seeded {
        receipts(&mut http, &plan, seeded, *n, "receipts_seeded").await?;
    }
    Ok(())
}

/// One user: connect, take its state, join the room, read, leave.
async fn set_up(
    target: &Target,
    from: std::net::IpAddr,
    name: &str,
    room: &str,
    i: usize,
) -> Result<conn::Ws> {
    let mut ws = conn::open(target, from, name).await?;
    if let Some(reason) = STATES[i % 4] {
        ws.send(Message::text(format!(
            r#"{{"type":"activity","state":"idle","reason":"{reason}"}}"#
        )))
        .await?;
    }
    conn::join(&mut ws, room).await?;
    ws.send(Message::text(format!(
        r#"{{"type":"read","room":"{room}","marker":{}}}"#,
        i + 1
    )))
    .await?;
    ws.send(Message::text(format!(
        r#"{{"type":"leave","room":"{room}"}}"#
    )))
    .await?;
    Ok(ws)
}

/// Times `receipts?at=` on a room whose markers are 1..=n: at = n/2 + 1,
/// so the count must be n - n/2.
async fn receipts(http: &mut Http, plan: &Plan, room: &str, n: u64, what: &str) -> Result<()> {
    let at = n / 2 + 1;
    let want = n - n / 2;
    let path = format!("/v1/rooms/{room}/receipts?at={at}");
    let mut times = Vec::with_capacity(plan.queries);
    for _ in 0..plan.queries {
        let t = Instant::now();
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, http.get(&path, &plan.key))
            .await
            .context("receipts timed out")??;
        times.push(t.elapsed().as_micros() as u64);
        ensure!(
            status == 200,
            "receipts: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let v: Value = serde_json::from_slice(&body)?;
        let count = v["count"].as_u64().context("no count")?;
        ensure!(count == want, "{what}: count {count}, expected {want}");
        let users = v["users"].as_array().context("no users")?;
        ensure!(
            users.len() == 20.min(want as usize),
            "{what}: {} users listed",
            users.len()
        );
        ensure!(
            users[0]["marker"].as_u64() == Some(n),
            "{what}: first is not the most advanced"
        );
    }
    times.sort_unstable();
    let l = &plan.label;
    figure(
        &format!("{l}.{what}_p50"),
        percentile(&times, 50.0) / 1000.0,
        &format!("ms, room of {n} markers, count {want}"),
    );
    figure(
        &format!("{l}.{what}_p99"),
        percentile(&times, 99.0) / 1000.0,
        "ms",
    );
    Ok(())
}
