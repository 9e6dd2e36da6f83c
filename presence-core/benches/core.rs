//! Core micro-benchmarks: a batched diff frame through the codec, and one
//! aggregation step of the machine. `cargo bench -p presence-core`.

#![allow(missing_docs)] // `criterion_group!` generates an undocumented `pub fn`.
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use presence_core::protocol::{Diff, ServerMessage, decode_client, decode_server, encode};
use presence_core::{
    Activity, ConnId, IdleReason, Machine, Millis, ResumeToken, RoomId, TimingPolicy, UserId,
};

fn batch(n: usize) -> ServerMessage {
    let diffs = (0..n)
        .map(|i| {
            let user = UserId::new(format!("user-{i:05}")).unwrap();
            match i % 3 {
                0 => Diff::UserIdle {
                    user,
                    reason: IdleReason::Hidden,
                },
                1 => Diff::UserActive { user },
                _ => Diff::TypingStarted { user },
            }
        })
        .collect();
    ServerMessage::Diffs {
        room: Some(RoomId::new("general").unwrap()),
        diffs,
    }
}

fn codec(c: &mut Criterion) {
    let msg = batch(50);
    let text = encode(&msg);
    c.bench_function("encode diffs frame (50 diffs)", |b| {
        b.iter(|| encode(black_box(&msg)))
    });
    c.bench_function("decode diffs frame (50 diffs)", |b| {
        b.iter(|| decode_server(black_box(&text)))
    });
    let activity = r#"{"type":"activity","state":"idle","reason":"hidden"}"#;
    c.bench_function("decode client activity frame", |b| {
        b.iter(|| decode_client(black_box(activity)))
    });
}

fn aggregation(c: &mut Criterion) {
    let mut m = Machine::new(TimingPolicy::default());
    let user = UserId::new("ana").unwrap();
    for i in 0..4 {
        let token = ResumeToken::new(format!("t{i}")).unwrap();
        m.connect(
            Millis(0),
            user.clone(),
            ConnId(i),
            token,
            None,
            Activity::Active,
        )
        .unwrap();
    }
    let mut now = Millis(0);
    let mut flip = false;
    c.bench_function("activity change + aggregation (4 tabs)", |b| {
        b.iter(|| {
            now = now.after(Duration::from_millis(1));
            flip = !flip;
            let a = if flip {
                Activity::Idle(IdleReason::NoInput)
            } else {
                Activity::Active
            };
            for conn in 0..4 {
                m.set_activity(now, ConnId(conn), a).unwrap();
            }
            m.drain_events().count()
        })
    });
}

criterion_group!(benches, codec, aggregation);
criterion_main!(benches);
