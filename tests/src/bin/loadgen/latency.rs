//! Figure 3: latency from a state change to its observation by another
//! client, at a steady total rate of changes spread over many rooms.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Target};
use crate::report::{figure, percentile};

pub async fn run(
    target: &Target,
    sources: usize,
    rate: u32,
    seconds: Duration,
    rooms: usize,
    per_room: usize,
) -> Result<()> {
    let actors = rooms * per_room;
    let epoch = Instant::now();
    // When each actor last changed, in µs since `epoch`.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..actors).map(|_| AtomicU64::new(0)).collect());
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<u64>();
    let mut commands = Vec::with_capacity(actors);
    let tag = std::process::id();
    for r in 0..rooms {
        let room = format!("lat-{tag}-{r}");
        // The observer.
        let mut ws = conn::open(target, conn::source(r, sources), &format!("o{r}")).await?;
        conn::join(&mut ws, &room).await?;
        let (sent, lat) = (sent.clone(), lat_tx.clone());
        tokio::spawn(async move {
            while let Some(Ok(frame)) = ws.next().await {
                let Message::Text(t) = frame else { continue };
                if !t.starts_with(r#"{"type":"diffs""#) {
                    continue;
                }
                let now = epoch.elapsed().as_micros() as u64;
                // Each change names its actor: "user":"a<index>".
                for part in t.split(r#""user":"a"#).skip(1) {
                    let idx: usize = part
                        .bytes()
                        .take_while(u8::is_ascii_digit)
                        .fold(0, |n, d| n * 10 + usize::from(d - b'0'));
                    if let Some(at) = sent.get(idx) {
                        let at = at.load(Ordering::Relaxed);
                        if at > 0 && lat.send(now.saturating_sub(at)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        for a in 0..per_room {
            let idx = r * per_room + a;
            let mut ws =
                conn::open(target, conn::source(idx + 1, sources), &format!("a{idx}")).await?;
            conn::join(&mut ws, &room).await?;
            let (tx, mut rx) = mpsc::channel::<bool>(4);
            commands.push(tx);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        cmd = rx.recv() => match cmd {
                            Some(idle) => if ws.send(conn::activity(idle)).await.is_err() { return },
                            None => return,
                        },
                        frame = ws.next() => if !matches!(frame, Some(Ok(_))) { return },
                    }
                }
            });
        }
    }
    drop(lat_tx);
    // Let the joins settle, then drive changes at the rate, round robin.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while lat_rx.try_recv().is_ok() {}
    let mut idle = vec![false; actors];
    let start = Instant::now();
    let mut issued = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while start.elapsed() < seconds {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while issued < due {
            let idx = (issued as usize) % actors;
            idle[idx] = !idle[idx];
            sent[idx].store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
            // A full channel means that actor's socket is backed up: skip, counted below.
            let _ = commands[idx].try_send(idle[idx]);
            issued += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::new();
    while let Ok(v) = lat_rx.try_recv() {
        samples.push(v);
    }
    samples.sort_unstable();
    let ms = |p| percentile(&samples, p) / 1000.0;
    figure(
        &format!("latency.{rate}.achieved_rate"),
        issued as f64 / elapsed,
        "changes/s",
    );
    figure(
        &format!("latency.{rate}.observations"),
        samples.len() as f64,
        "observations",
    );
    figure(&format!("latency.{rate}.p50"), ms(50.0), "ms");
    figure(&format!("latency.{rate}.p99"), ms(99.0), "ms");
    figure(&format!("latency.{rate}.p99.9"), ms(99.9), "ms");
    Ok(())
}
