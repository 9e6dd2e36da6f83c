//! Property tests of the machine: order independence, silent reconnects,
//! typing expiry, forward-only read markers, and an observer replaying the
//! event stream always agreeing with the machine.

use std::collections::HashMap;
use std::time::Duration;

use presence_core::machine::{Event, Machine};
use presence_core::protocol::Diff;
use presence_core::{
    Activity, ConnId, IdleReason, Millis, PresenceState, ResumeToken, RoomId, Status, TimingPolicy,
    UserId,
};
use proptest::prelude::*;

const T0: Millis = Millis(1_700_000_000_000);

fn policy() -> TimingPolicy {
    TimingPolicy {
        heartbeat_interval: Duration::from_millis(1_000),
        heartbeat_timeout: Duration::from_millis(3_000),
        offline_grace: Duration::from_millis(2_000),
        leave_grace: Duration::from_millis(500),
        idle_after: Duration::from_millis(10_000),
        typing_ttl: Duration::from_millis(1_500),
    }
}

fn uid(n: u8) -> UserId {
    UserId::new(format!("u{n}")).unwrap()
}

fn rid(n: u8) -> RoomId {
    RoomId::new(format!("r{n}")).unwrap()
}

fn tok(n: u64) -> ResumeToken {
    ResumeToken::new(format!("t{n}")).unwrap()
}

fn activity() -> impl Strategy<Value = Activity> {
    prop_oneof![
        Just(Activity::Active),
        Just(Activity::Idle(IdleReason::NoInput)),
        Just(Activity::Idle(IdleReason::Hidden)),
        Just(Activity::Idle(IdleReason::Blurred)),
        Just(Activity::Idle(IdleReason::Locked)),
    ]
}

proptest! {
    /// Per-connection activity histories, interleaved in any order, leave the
    /// user in the same aggregated state.
    #[test]
    fn aggregate_does_not_depend_on_interleaving(
        histories in prop::collection::vec(prop::collection::vec(activity(), 1..6), 1..5),
        seed_a in any::<u64>(),
        seed_b in any::<u64>(),
    ) {
        let run = |seed: u64| {
            let mut m = Machine::new(policy());
            for (i, _) in histories.iter().enumerate() {
                m.connect(T0, uid(0), ConnId(i as u64), tok(i as u64), None, Activity::Active).unwrap();
            }
            let mut cursors = vec![0usize; histories.len()];
            let mut rng = seed;
            loop {
                let open: Vec<usize> = (0..histories.len()).filter(|&i| cursors[i] < histories[i].len()).collect();
                if open.is_empty() { break; }
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let i = open[(rng >> 33) as usize % open.len()];
                m.set_activity(T0, ConnId(i as u64), histories[i][cursors[i]]).unwrap();
                cursors[i] += 1;
            }
            let v = m.view(&uid(0)).unwrap();
            (v.state, v.reason)
        };
        prop_assert_eq!(run(seed_a), run(seed_b));
    }

    /// A connection that drops and resumes within the grace period produces
    /// no event at all, whatever the user was doing.
    #[test]
    fn disconnect_and_resume_within_grace_emits_nothing(
        conns in 1u64..4,
        acts in prop::collection::vec(activity(), 4),
        rooms in prop::collection::vec(0u8..3, 0..3),
        which in 0u64..4,
        gap_ms in 0u64..2_000,
        clean in any::<bool>(),
    ) {
        let mut m = Machine::new(policy());
        for c in 0..conns {
            m.connect(T0, uid(0), ConnId(c), tok(c), None, acts[c as usize]).unwrap();
            for r in &rooms { m.join(T0, ConnId(c), rid(*r)).unwrap(); }
        }
        m.drain_events().for_each(drop);
        let c = which % conns;
        let t1 = T0.after(Duration::from_millis(100));
        let grace = if clean { policy().leave_grace } else { policy().offline_grace };
        let gap = Duration::from_millis(gap_ms).min(grace - Duration::from_millis(1));
        if clean { m.leaving(t1, ConnId(c)); }
        m.dropped(t1, ConnId(c));
        let t2 = t1.after(gap);
        m.tick(t2);
        let out = m.connect(t2, uid(0), ConnId(99), tok(99), Some(&tok(c)), acts[c as usize]).unwrap();
        prop_assert!(out.resumed);
        m.tick(t2.after(Duration::from_millis(2_500)));
        let events: Vec<Event> = m.drain_events().collect();
        prop_assert!(events.is_empty(), "{events:?}");
    }

    /// Whatever typing frames arrive, typing stops by itself ttl after the
    /// last refresh, and every start is matched by exactly one stop.
    #[test]
    fn typing_always_expires(ops in prop::collection::vec((any::<bool>(), 0u64..2_000), 1..30)) {
        let mut m = Machine::new(policy());
        m.connect(T0, uid(0), ConnId(1), tok(1), None, Activity::Active).unwrap();
        m.join(T0, ConnId(1), rid(0)).unwrap();
        let mut now = T0;
        for (active, wait) in ops {
            now = now.after(Duration::from_millis(wait));
            m.heartbeat(now, ConnId(1)).unwrap();
            m.tick(now);
            m.typing(now, ConnId(1), &rid(0), active).unwrap();
        }
        m.heartbeat(now, ConnId(1)).unwrap();
        m.tick(now.after(policy().typing_ttl));
        prop_assert!(m.typing_in(&rid(0)).is_empty());
        let (mut started, mut stopped) = (0, 0);
        for e in m.drain_events() {
            match e.diff {
                Diff::TypingStarted { .. } => { started += 1; prop_assert_eq!(stopped, started - 1); }
                Diff::TypingStopped { .. } => { stopped += 1; prop_assert_eq!(stopped, started); }
                _ => {}
            }
        }
        prop_assert_eq!(started, stopped);
    }

    /// Receipts announced for a user in a room strictly increase, and the
    /// stored marker is the largest one ever sent.
    #[test]
    fn read_markers_never_go_back(markers in prop::collection::vec(0u64..1_000, 1..40)) {
        let mut m = Machine::new(policy());
        m.connect(T0, uid(0), ConnId(1), tok(1), None, Activity::Active).unwrap();
        m.join(T0, ConnId(1), rid(0)).unwrap();
        for &k in &markers { m.read(T0, ConnId(1), &rid(0), k).unwrap(); }
        let announced: Vec<u64> = m.drain_events().filter_map(|e| match e.diff {
            Diff::Read { marker, .. } => Some(marker), _ => None }).collect();
        prop_assert!(announced.windows(2).all(|w| w[0] < w[1]));
        prop_assert_eq!(m.receipts_in(&rid(0))[0].marker, *markers.iter().max().unwrap());
    }

    /// Seeded simulation: several users and connections; random activity,
    /// status, drops, leaves, resumes, heartbeats and time. An observer that
    /// applies only the global events always agrees with the machine, and
    /// every event it applies is a real change (flap-free).
    #[test]
    fn observer_replaying_events_agrees_with_the_machine(ops in prop::collection::vec(op(), 1..120)) {
        let mut m = Machine::new(policy());
        let mut observed: HashMap<UserId, PresenceState> = HashMap::new();
        let mut now = T0;
        let mut next_conn = 100u64;
        for op in ops {
            match op {
                Op::Connect(u, a) => {
                    next_conn += 1;
                    m.connect(now, uid(u), ConnId(next_conn), tok(next_conn), None, a).ok();
                }
                Op::Resume(u, c) => {
                    next_conn += 1;
                    m.connect(now, uid(u), ConnId(next_conn), tok(next_conn), Some(&tok(100 + c)), Activity::Active).ok();
                }
                Op::Activity(c, a) => { m.set_activity(now, ConnId(100 + c), a).ok(); }
                Op::Status(c, invisible) => {
                    let s = if invisible { Status::Invisible } else { Status::Busy };
                    m.set_status(now, ConnId(100 + c), s, None).ok();
                }
                Op::Drop(c) => m.dropped(now, ConnId(100 + c)),
                Op::Leave(c) => m.leaving(now, ConnId(100 + c)),
                Op::Beat(c) => { m.heartbeat(now, ConnId(100 + c)).ok(); }
                Op::Wait(ms) => { now = now.after(Duration::from_millis(ms)); m.tick(now); }
            }
            for e in m.drain_events().filter(|e| e.global) {
                let before = observed.get(e.diff.user()).copied().unwrap_or(PresenceState::Offline);
                let after = match &e.diff {
                    Diff::UserConnected { presence } => presence.state,
                    Diff::UserDisconnected { .. } => PresenceState::Offline,
                    Diff::UserIdle { .. } => PresenceState::Idle,
                    Diff::UserActive { .. } => PresenceState::Active,
                    _ => before,
                };
                match &e.diff {
                    Diff::UserConnected { .. } => prop_assert_eq!(before, PresenceState::Offline),
                    Diff::UserDisconnected { .. } | Diff::UserIdle { .. } | Diff::Status { .. } => prop_assert!(before.is_online()),
                    Diff::UserActive { .. } => prop_assert_eq!(before, PresenceState::Idle),
                    _ => {}
                }
                observed.insert(e.diff.user().clone(), after);
            }
            for u in 0..3 {
                let truth = m.view(&uid(u)).map_or(PresenceState::Offline, |v| v.state);
                let seen = observed.get(&uid(u)).copied().unwrap_or(PresenceState::Offline);
                prop_assert_eq!(truth, seen, "user u{}", u);
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Connect(u8, Activity),
    Resume(u8, u64),
    Activity(u64, Activity),
    Status(u64, bool),
    Drop(u64),
    Leave(u64),
    Beat(u64),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 1u64..12;
    prop_oneof![
        (0u8..3, activity()).prop_map(|(u, a)| Op::Connect(u, a)),
        (0u8..3, conn.clone()).prop_map(|(u, c)| Op::Resume(u, c)),
        (conn.clone(), activity()).prop_map(|(c, a)| Op::Activity(c, a)),
        (conn.clone(), any::<bool>()).prop_map(|(c, i)| Op::Status(c, i)),
        conn.clone().prop_map(Op::Drop),
        conn.clone().prop_map(Op::Leave),
        conn.prop_map(Op::Beat),
        (0u64..4_000).prop_map(Op::Wait),
    ]
}
