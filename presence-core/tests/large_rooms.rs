//! The large-room mode end to end through the real parts: a `Machine`
//! makes the changes, `LargeRooms` decides the mode and the summaries, and a
//! client `Client` reads the frames an observer in the room would be sent.
//! The node in between does what the server's flush does, with no batch
//! window.

use std::collections::BTreeSet;
use std::time::Duration;

use presence_core::client::{Client, ClientConfig};
use presence_core::large::{Due, LargeRooms};
use presence_core::machine::Machine;
use presence_core::protocol::{Counts, Diff, ServerMessage, encode};
use presence_core::{
    Activity, ConnId, IdleReason, Millis, PresenceState, ResumeToken, RoomId, Status, TimingPolicy,
    UserId,
};
use proptest::prelude::*;

const T0: Millis = Millis(1_700_000_000_000);
/// Large at 5 online members, small again below 4.
const THRESHOLD: usize = 5;
const INTERVAL: Duration = Duration::from_millis(1_000);

fn policy() -> TimingPolicy {
    TimingPolicy {
        heartbeat_interval: Duration::from_millis(1_000),
        heartbeat_timeout: Duration::from_millis(30_000),
        offline_grace: Duration::from_millis(700),
        leave_grace: Duration::from_millis(200),
        idle_after: Duration::from_millis(10_000),
        typing_ttl: Duration::from_millis(1_500),
    }
}

fn room() -> RoomId {
    RoomId::new("big").expect("valid")
}

fn uid(n: u64) -> UserId {
    UserId::new(format!("u{n}")).expect("valid")
}

/// What the observer was sent, for the checks.
#[derive(Default)]
struct Log {
    summaries: Vec<Millis>,
    /// (time, became large, online count then).
    switches: Vec<(Millis, bool, usize)>,
}

/// One observer's view of the room, fed like the server feeds a socket.
struct Node {
    machine: Machine,
    large: LargeRooms,
    observer: Client,
    log: Log,
}

impl Node {
    fn new() -> Self {
        let mut observer = Client::new(T0, ClientConfig::default());
        observer.start(T0);
        observer.opened(T0);
        observer.received(
            T0,
            r#"{"type":"welcome","v":1,"user":"observer","conn":1,"resume":"r","resumed":false,"heartbeat_ms":10000,"idle_after_ms":30000,"status":"available"}"#,
        );
        observer.join(room());
        let mut node = Self {
            machine: Machine::new(policy()),
            large: LargeRooms::new(THRESHOLD, INTERVAL),
            observer,
            log: Log::default(),
        };
        node.send(T0, &snapshot(Vec::new(), None));
        node
    }

    /// A frame to the observer, on the wire.
    fn send(&mut self, now: Millis, msg: &ServerMessage) {
        self.observer.received(now, &encode(msg));
    }

    fn truth(&self) -> Counts {
        self.machine.counts(&room())
    }

    fn online_truth(&self) -> BTreeSet<UserId> {
        self.machine
            .members(&room())
            .into_iter()
            .filter(|v| v.state.is_online())
            .map(|v| v.user)
            .collect()
    }

    fn online_seen(&self) -> BTreeSet<UserId> {
        self.observer
            .cache()
            .room(&room())
            .map(|r| {
                r.members
                    .values()
                    .filter(|v| v.state.is_online())
                    .map(|v| v.user.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn full_snapshot(&mut self, now: Millis, large: Option<Counts>) {
        let members = match large {
            Some(_) => self.machine.first_online(&room()),
            None => self.machine.members(&room()),
        };
        self.send(now, &snapshot(members, large));
    }

    /// What the hub's flush does for the room.
    fn flush(&mut self, now: Millis) {
        let r = room();
        let diffs: Vec<Diff> = self
            .machine
            .drain_events()
            .filter(|e| e.rooms.contains(&r))
            .map(|e| e.diff)
            .collect();
        if !diffs.is_empty() && !self.large.absorb(&r, &diffs) {
            if self.large.may_enter(&r, self.machine.room_size(&r))
                && self.large.enter(&r, now, self.truth())
            {
                self.log.switches.push((now, true, self.truth().online));
                self.full_snapshot(now, Some(self.truth()));
            } else {
                let msg = ServerMessage::Diffs {
                    room: Some(r.clone()),
                    diffs,
                };
                self.send(now, &msg);
            }
        }
        for due in self.large.due(now) {
            let m = &self.machine;
            let view = |u: &UserId| {
                m.view(u)
                    .filter(|v| v.state.is_online() && m.in_room(&r, u))
            };
            match self.large.summarize(&due, now, m.counts(&due), view) {
                Due::Summary(msg) => {
                    let ServerMessage::Summary {
                        counts,
                        joined,
                        left,
                        ..
                    } = &msg
                    else {
                        panic!("not a summary: {msg:?}");
                    };
                    assert_eq!(*counts, self.truth(), "a summary tells the truth");
                    let came: BTreeSet<&UserId> = joined.iter().map(|v| &v.user).collect();
                    let went: BTreeSet<&UserId> = left.iter().collect();
                    assert_eq!(came.len(), joined.len(), "each user once");
                    assert_eq!(went.len(), left.len(), "each user once");
                    assert!(came.is_disjoint(&went), "a user came or went, not both");
                    self.log.summaries.push(now);
                    self.send(now, &msg);
                }
                Due::Small => {
                    self.log.switches.push((now, false, self.truth().online));
                    self.full_snapshot(now, None);
                }
                Due::Quiet => {}
            }
        }
    }

    /// What must hold after every flush.
    fn check(&self) {
        let seen = self.observer.cache().room(&room()).expect("joined");
        let settled = self.large.next_due().is_none();
        assert_eq!(
            seen.large.is_some(),
            self.large.is_large(&room()),
            "the observer knows the mode"
        );
        if settled {
            assert_eq!(seen.counts(), self.truth(), "counts are the truth");
            assert_eq!(self.online_seen(), self.online_truth(), "who is online");
        }
    }
}

fn snapshot(members: Vec<presence_core::PresenceView>, large: Option<Counts>) -> ServerMessage {
    ServerMessage::Snapshot {
        room: room(),
        members,
        typing: Vec::new(),
        receipts: Vec::new(),
        more: false,
        large: large.is_some(),
        counts: large,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Connect(u64, Activity),
    Join(u64),
    Leave(u64),
    Activity(u64, Activity),
    Invisible(u64, bool),
    Drop(u64),
    Wait(u64),
}

fn activity() -> impl Strategy<Value = Activity> {
    prop_oneof![
        Just(Activity::Active),
        Just(Activity::Idle(IdleReason::NoInput)),
        Just(Activity::Idle(IdleReason::Hidden)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0u64..10;
    prop_oneof![
        3 => (conn.clone(), activity()).prop_map(|(c, a)| Op::Connect(c, a)),
        4 => conn.clone().prop_map(Op::Join),
        2 => conn.clone().prop_map(Op::Leave),
        4 => (conn.clone(), activity()).prop_map(|(c, a)| Op::Activity(c, a)),
        1 => (conn.clone(), any::<bool>()).prop_map(|(c, i)| Op::Invisible(c, i)),
        1 => conn.prop_map(Op::Drop),
        3 => (0u64..1_500).prop_map(Op::Wait),
    ]
}

proptest! {
    /// Whatever members do, the observer's counts and online members equal
    /// the machine's whenever no summary is owed (and after one interval
    /// of quiet at the latest), summaries come at most once per interval,
    /// and the mode only switches across the hysteresis gap.
    #[test]
    fn an_observer_of_a_large_room_ends_up_with_the_truth(ops in prop::collection::vec(op(), 1..150)) {
        let mut node = Node::new();
        let mut now = T0;
        for op in ops {
            let m = &mut node.machine;
            // Connection c belongs to user c % 7: some users hold two.
            let conn = |c: u64| ConnId(c + 1);
            match op {
                Op::Connect(c, a) => {
                    let token = ResumeToken::new(format!("t{c}-{}", now.0)).expect("valid");
                    m.connect(now, uid(c % 7), conn(c), token, None, a).ok();
                }
                Op::Join(c) => { m.join(now, conn(c), room()).ok(); }
                Op::Leave(c) => { m.leave(now, conn(c), &room()).ok(); }
                Op::Activity(c, a) => { m.set_activity(now, conn(c), a).ok(); }
                Op::Invisible(c, i) => {
                    let s = if i { Status::Invisible } else { Status::Available };
                    m.set_status(now, conn(c), s, None).ok();
                }
                Op::Drop(c) => m.dropped(now, conn(c)),
                Op::Wait(ms) => {
                    now = now.after(Duration::from_millis(ms));
                    m.tick(now);
                }
            }
            node.flush(now);
            node.check();
        }
        now = now.after(INTERVAL);
        node.flush(now);
        prop_assert!(node.large.next_due().is_none(), "one interval later, nothing is owed");
        node.check();

        for pair in node.log.summaries.windows(2) {
            prop_assert!(pair[1].since(pair[0]) >= INTERVAL, "summaries {pair:?}");
        }
        for (at, large, online) in &node.log.switches {
            if *large {
                prop_assert!(*online >= THRESHOLD, "entered at {online} ({at:?})");
            } else {
                prop_assert!(*online < THRESHOLD - THRESHOLD / 5, "left at {online} ({at:?})");
            }
        }
        for pair in node.log.switches.windows(2) {
            prop_assert_ne!(pair[0].1, pair[1].1, "switches alternate");
        }
    }
}

#[test]
fn a_room_at_the_threshold_switches_once_each_way_and_summaries_carry_the_counts() {
    let mut node = Node::new();
    let mut now = T0;
    let step = |node: &mut Node, now: &mut Millis, ms: u64| {
        *now = now.after(Duration::from_millis(ms));
        node.machine.tick(*now);
        node.flush(*now);
        node.check();
    };
    for c in 0..5 {
        let token = ResumeToken::new(format!("t{c}")).expect("valid");
        node.machine
            .connect(now, uid(c), ConnId(c + 1), token, None, Activity::Active)
            .expect("connects");
        node.machine
            .join(now, ConnId(c + 1), room())
            .expect("joins");
        step(&mut node, &mut now, 10);
    }
    assert_eq!(node.log.switches.len(), 1, "large at 5");
    assert!(
        node.observer
            .cache()
            .room(&room())
            .is_some_and(|r| r.large.is_some())
    );
    // At the boundary, one member going and coming back does not switch.
    for _ in 0..3 {
        node.machine.leave(now, ConnId(5), &room()).expect("in it");
        step(&mut node, &mut now, 600);
        node.machine.join(now, ConnId(5), room()).expect("joins");
        step(&mut node, &mut now, 600);
    }
    assert_eq!(node.log.switches.len(), 1, "no flapping at the boundary");
    node.machine
        .set_activity(now, ConnId(1), Activity::Idle(IdleReason::Hidden))
        .expect("known");
    step(&mut node, &mut now, 1_000);
    let seen = node
        .observer
        .cache()
        .room(&room())
        .expect("joined")
        .counts();
    assert_eq!((seen.online, seen.active, seen.idle), (5, 4, 1));
    // Down to 3: small again, with a full snapshot.
    node.machine.leave(now, ConnId(5), &room()).expect("in it");
    node.machine.leave(now, ConnId(4), &room()).expect("in it");
    step(&mut node, &mut now, 1_000);
    assert_eq!(node.log.switches.len(), 2, "small below 4");
    let r = node.observer.cache().room(&room()).expect("joined");
    assert_eq!(r.large, None);
    assert_eq!(r.counts().online, 3);
    assert_eq!(
        r.members.get(&uid(0)).map(|v| v.state),
        Some(PresenceState::Idle),
        "the full snapshot shows states again"
    );
}
