//! Unit tests: one behaviour each, with time passed in by hand.

use std::time::Duration;

use super::*;
use crate::object::JsonObject;
use crate::presence::{IdleReason, PresenceState};

const T0: Millis = Millis(1_000_000);

fn policy() -> TimingPolicy {
    TimingPolicy {
        heartbeat_interval: Duration::from_secs(10),
        heartbeat_timeout: Duration::from_secs(30),
        offline_grace: Duration::from_secs(10),
        leave_grace: Duration::from_secs(2),
        idle_after: Duration::from_secs(60),
        typing_ttl: Duration::from_secs(6),
    }
}

fn at(secs: u64) -> Millis {
    T0.after(Duration::from_secs(secs))
}

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn room(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

fn token(n: u64) -> ResumeToken {
    ResumeToken::new(format!("tok{n}")).unwrap()
}

struct Harness {
    m: Machine,
}

impl Harness {
    fn new() -> Self {
        Self {
            m: Machine::new(policy()),
        }
    }

    fn connect(&mut self, now: Millis, who: &str, conn: u64) -> Outcome {
        self.m
            .connect(
                now,
                user(who),
                ConnId(conn),
                token(conn),
                None,
                Activity::Active,
            )
            .unwrap()
    }

    fn resume(&mut self, now: Millis, who: &str, new_conn: u64, old: u64) -> Outcome {
        self.m
            .connect(
                now,
                user(who),
                ConnId(new_conn),
                token(new_conn),
                Some(&token(old)),
                Activity::Active,
            )
            .unwrap()
    }

    /// Event names with their global flag, drained.
    fn names(&mut self) -> Vec<&'static str> {
        self.m.drain_events().map(|e| e.name()).collect()
    }

    fn events(&mut self) -> Vec<Event> {
        self.m.drain_events().collect()
    }
}

#[test]
fn first_connection_announces_the_user_once() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    let ev = h.events();
    assert_eq!(ev.len(), 1);
    assert!(ev[0].global);
    match &ev[0].diff {
        Diff::UserConnected { presence } => {
            assert_eq!(presence.state, PresenceState::Active);
            assert_eq!(presence.last_active, Some(T0));
        }
        other => panic!("unexpected {other:?}"),
    }
    h.connect(at(1), "ana", 2);
    assert!(h.names().is_empty(), "a second tab is the same user");
}

#[test]
fn idle_and_active_follow_the_most_active_connection() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.connect(T0, "ana", 2);
    h.names();
    h.m.set_activity(at(1), ConnId(1), Activity::Idle(IdleReason::Hidden))
        .unwrap();
    assert!(h.names().is_empty(), "tab 2 is still active");
    h.m.set_activity(at(2), ConnId(2), Activity::Idle(IdleReason::NoInput))
        .unwrap();
    let ev = h.events();
    assert_eq!(
        ev[0].diff,
        Diff::UserIdle {
            user: user("ana"),
            reason: IdleReason::NoInput
        }
    );
    assert_eq!(h.m.view(&user("ana")).unwrap().last_active, Some(at(2)));
    h.m.set_activity(at(3), ConnId(1), Activity::Active)
        .unwrap();
    assert_eq!(h.names(), ["user_active"]);
    h.m.set_activity(at(4), ConnId(1), Activity::Active)
        .unwrap();
    assert!(h.names().is_empty(), "no event for a non-change");
}

/// `last_active` is the user's last change between active and idle (PROTOCOL.md, "Presence
/// views"): an active user's spell start, an idle user's spell end; a tab's repeated "active"
/// does not move it, and offline views carry `last_seen` instead.
#[test]
fn last_active_is_the_last_change_between_active_and_idle() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.connect(at(1), "ana", 2);
    let last_active = |h: &Harness| h.m.view(&user("ana")).unwrap().last_active;
    assert_eq!(last_active(&h), Some(T0), "the spell began at the connect");
    h.m.set_activity(at(2), ConnId(2), Activity::Active)
        .unwrap();
    assert_eq!(
        last_active(&h),
        Some(T0),
        "a second tab's active is no news"
    );
    h.m.set_activity(at(3), ConnId(1), Activity::Idle(IdleReason::Hidden))
        .unwrap();
    h.m.set_activity(at(4), ConnId(2), Activity::Idle(IdleReason::NoInput))
        .unwrap();
    assert_eq!(last_active(&h), Some(at(4)), "the spell ended");
    h.m.set_activity(at(5), ConnId(2), Activity::Idle(IdleReason::Blurred))
        .unwrap();
    assert_eq!(last_active(&h), Some(at(4)), "idle to idle keeps it");
    h.m.set_activity(at(6), ConnId(1), Activity::Active)
        .unwrap();
    assert_eq!(last_active(&h), Some(at(6)), "a new spell");
    h.m.dropped(at(7), ConnId(1));
    h.m.dropped(at(7), ConnId(2));
    h.m.tick(at(100));
    let view = h.m.view(&user("ana")).unwrap();
    assert_eq!((view.last_active, view.last_seen), (None, Some(at(7))));
}

#[test]
fn idle_reason_change_is_announced_but_same_reason_is_not() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.names();
    h.m.set_activity(at(1), ConnId(1), Activity::Idle(IdleReason::Blurred))
        .unwrap();
    h.m.set_activity(at(2), ConnId(1), Activity::Idle(IdleReason::Blurred))
        .unwrap();
    h.m.set_activity(at(3), ConnId(1), Activity::Idle(IdleReason::Hidden))
        .unwrap();
    assert_eq!(h.names(), ["user_idle", "user_idle"]);
}

#[test]
fn dropped_connection_goes_offline_after_grace_exactly_once() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.names();
    h.m.dropped(at(5), ConnId(1));
    assert_eq!(h.m.next_deadline(), Some(at(15)));
    h.m.tick(at(14));
    assert!(h.names().is_empty(), "still within grace");
    h.m.tick(at(15));
    let ev = h.events();
    assert_eq!(
        ev.iter().map(|e| e.name()).collect::<Vec<_>>(),
        ["user_disconnected"]
    );
    assert_eq!(
        ev[0].diff,
        Diff::UserDisconnected {
            user: user("ana"),
            last_seen: Some(at(5))
        }
    );
    h.m.tick(at(100));
    assert!(h.names().is_empty());
    let view = h.m.view(&user("ana")).unwrap();
    assert_eq!(view.state, PresenceState::Offline);
    assert_eq!(view.last_seen, Some(at(5)));
    assert_eq!(h.m.next_deadline(), None);
}

#[test]
fn reconnect_within_grace_is_silent() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.names();
    h.m.dropped(at(5), ConnId(1));
    let out = h.resume(at(9), "ana", 2, 1);
    assert_eq!(out.conn, ConnId(1));
    assert!(out.resumed);
    assert!(!out.superseded);
    h.m.tick(at(38)); // resumed at 9: the heartbeat deadline is 39
    assert!(h.m.next_deadline() >= Some(at(39)));
    assert!(h.names().is_empty());
    assert_eq!(h.m.view(&user("ana")).unwrap().state, PresenceState::Active);
}

#[test]
fn a_new_connection_within_grace_is_silent_too() {
    // A client that lost its resume token still does not flap the user.
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.names();
    h.m.dropped(at(5), ConnId(1));
    h.connect(at(7), "ana", 2);
    h.m.tick(at(20));
    assert!(h.names().is_empty());
    assert_eq!(h.m.connections_of(&user("ana")), [ConnId(2)]);
}

#[test]
fn clean_leave_uses_the_short_grace_and_a_reload_resumes() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.names();
    h.m.leaving(at(5), ConnId(1));
    h.m.dropped(at(5), ConnId(1)); // the socket closes right after
    assert_eq!(h.m.next_deadline(), Some(at(7)));
    h.resume(at(6), "ana", 2, 1);
    h.m.tick(at(8));
    assert!(h.names().is_empty(), "the reload resumed in time");
    h.m.leaving(at(10), ConnId(1));
    h.m.tick(at(12));
    assert_eq!(h.names(), ["user_disconnected"]);
}

#[test]
fn heartbeat_timeout_detaches_then_grace_removes() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.names();
    h.m.heartbeat(at(20), ConnId(1)).unwrap();
    assert!(h.m.tick(at(30)).is_empty(), "heard at 20: alive until 50");
    assert_eq!(h.m.tick(at(50)), [ConnId(1)]);
    assert!(h.names().is_empty(), "grace runs after the timeout");
    h.m.tick(at(59));
    assert!(h.names().is_empty());
    h.m.tick(at(60));
    let ev = h.events();
    assert_eq!(
        ev[0].diff,
        Diff::UserDisconnected {
            user: user("ana"),
            last_seen: Some(at(20))
        }
    );
}

#[test]
fn a_late_tick_still_runs_timeout_and_grace_in_order() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.names();
    assert_eq!(h.m.tick(at(1000)), [ConnId(1)]);
    assert_eq!(h.names(), ["user_disconnected"]);
    assert_eq!(h.m.stats().connections, 0);
}

#[test]
fn resume_of_a_live_connection_supersedes_the_old_socket() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    let out = h.resume(at(1), "ana", 2, 1);
    assert!(out.resumed && out.superseded);
    assert_eq!(out.token, token(1));
}

#[test]
fn resume_token_of_another_user_starts_a_fresh_connection() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.names();
    let out = h.resume(at(1), "bob", 2, 1);
    assert!(!out.resumed);
    assert_eq!(out.conn, ConnId(2));
    assert_eq!(h.m.user_of(ConnId(1)), Some(&user("ana")));
    assert_eq!(h.names(), ["user_connected"]);
}

#[test]
fn rooms_hear_joins_leaves_and_disconnects() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.connect(T0, "ana", 2);
    h.names();
    assert!(h.m.join(at(1), ConnId(1), room("r")).unwrap());
    assert!(!h.m.join(at(1), ConnId(1), room("r")).unwrap());
    h.m.join(at(1), ConnId(2), room("r")).unwrap();
    let ev = h.events();
    assert_eq!(ev.len(), 1, "one join per user, not per tab");
    assert_eq!((ev[0].name(), ev[0].global), ("user_connected", false));
    assert_eq!(ev[0].rooms, [room("r")]);
    assert_eq!(h.m.members(&room("r")).len(), 1);

    h.m.leave(at(2), ConnId(1), &room("r")).unwrap();
    assert!(h.names().is_empty(), "tab 2 is still in the room");
    assert_eq!(
        h.m.leave(at(2), ConnId(1), &room("r")),
        Err(MachineError::NotInRoom)
    );
    h.m.dropped(at(3), ConnId(2));
    h.m.dropped(at(3), ConnId(1));
    h.m.tick(at(13));
    let ev = h.events();
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].name(), ev[0].global), ("user_disconnected", true));
    assert_eq!(ev[0].rooms, [room("r")], "the room hears the user go");
    assert!(h.m.members(&room("r")).is_empty());
}

#[test]
fn room_limit_is_enforced() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    for i in 0..MAX_ROOMS_PER_CONNECTION {
        h.m.join(T0, ConnId(1), room(&format!("r{i}"))).unwrap();
    }
    assert_eq!(
        h.m.join(T0, ConnId(1), room("one-too-many")),
        Err(MachineError::TooManyRooms)
    );
}

#[test]
fn typing_starts_refreshes_and_expires() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.m.join(T0, ConnId(1), room("r")).unwrap();
    h.names();
    assert_eq!(
        h.m.typing(T0, ConnId(1), &room("elsewhere"), true),
        Err(MachineError::NotInRoom)
    );
    h.m.typing(at(1), ConnId(1), &room("r"), true).unwrap();
    h.m.typing(at(4), ConnId(1), &room("r"), true).unwrap();
    assert_eq!(h.names(), ["typing_started"]);
    assert_eq!(h.m.typing_in(&room("r")), [user("ana")]);
    h.m.tick(at(9));
    assert!(h.names().is_empty(), "refreshed at 4: expires at 10");
    h.m.tick(at(10));
    assert_eq!(h.names(), ["typing_stopped"]);
    assert!(h.m.typing_in(&room("r")).is_empty());
}

#[test]
fn typing_stops_on_send_on_stop_and_when_the_user_leaves() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.m.join(T0, ConnId(1), room("r")).unwrap();
    h.m.typing(T0, ConnId(1), &room("r"), true).unwrap();
    h.names();
    h.m.message_sent(at(1), &user("ana"), &room("r"));
    assert_eq!(h.names(), ["typing_stopped"]);
    h.m.typing(at(1), ConnId(1), &room("r"), false).unwrap();
    assert!(h.names().is_empty(), "already stopped");
    h.m.typing(at(2), ConnId(1), &room("r"), true).unwrap();
    h.m.dropped(at(3), ConnId(1));
    h.m.tick(at(13));
    assert_eq!(
        h.names(),
        ["typing_started", "typing_stopped", "user_disconnected"]
    );
}

#[test]
fn typing_is_the_users_while_any_of_their_connections_types() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.connect(T0, "ana", 2);
    h.m.join(T0, ConnId(1), room("r")).unwrap();
    h.m.join(T0, ConnId(2), room("r")).unwrap();
    h.names();
    h.m.typing(at(1), ConnId(1), &room("r"), true).unwrap();
    h.m.typing(at(2), ConnId(2), &room("r"), true).unwrap();
    h.m.typing(at(3), ConnId(1), &room("r"), false).unwrap();
    assert_eq!(h.names(), ["typing_started"], "tab 2 still types");
    h.m.typing(at(4), ConnId(2), &room("r"), true).unwrap();
    h.m.typing(at(5), ConnId(2), &room("r"), false).unwrap();
    assert_eq!(h.names(), ["typing_stopped"]);
    // Expiry is per connection too: tab 1 expires, tab 2 refreshed later.
    h.m.typing(at(10), ConnId(1), &room("r"), true).unwrap();
    h.m.typing(at(13), ConnId(2), &room("r"), true).unwrap();
    h.m.tick(at(16));
    assert_eq!(h.names(), ["typing_started"], "tab 2 types until 19");
    h.m.tick(at(19));
    assert_eq!(h.names(), ["typing_stopped"]);
    // A typing tab that leaves the room stops only its own typing.
    h.m.typing(at(20), ConnId(1), &room("r"), true).unwrap();
    h.m.typing(at(20), ConnId(2), &room("r"), true).unwrap();
    h.m.leave(at(21), ConnId(1), &room("r")).unwrap();
    assert_eq!(h.names(), ["typing_started"]);
    h.m.leave(at(22), ConnId(2), &room("r")).unwrap();
    assert_eq!(h.names(), ["typing_stopped", "user_left"]);
}

#[test]
fn read_markers_only_move_forward() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.m.join(T0, ConnId(1), room("r")).unwrap();
    h.names();
    assert!(h.m.read(T0, ConnId(1), &room("r"), 5).unwrap());
    assert!(!h.m.read(T0, ConnId(1), &room("r"), 3).unwrap());
    assert!(!h.m.read(T0, ConnId(1), &room("r"), 5).unwrap());
    assert!(h.m.read(T0, ConnId(1), &room("r"), 0).is_ok());
    assert_eq!(h.names(), ["read"]);
    assert_eq!(h.m.receipts_in(&room("r"))[0].marker, 5);
    assert_eq!(
        h.m.read(T0, ConnId(1), &room("r"), MAX_READ_MARKER + 1),
        Err(MachineError::InvalidMarker)
    );
}

#[test]
fn invisible_users_look_offline_and_come_back() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.m.join(T0, ConnId(1), room("r")).unwrap();
    h.m.typing(T0, ConnId(1), &room("r"), true).unwrap();
    h.names();
    assert!(
        h.m.set_status(at(1), ConnId(1), Status::Invisible, None)
            .unwrap()
    );
    assert_eq!(h.names(), ["typing_stopped", "user_disconnected"]);
    assert!(h.m.members(&room("r")).is_empty());
    let view = h.m.view(&user("ana")).unwrap();
    assert_eq!(view.state, PresenceState::Offline);
    assert_eq!(view.status, Status::Available, "invisible is never shown");
    h.m.set_activity(at(2), ConnId(1), Activity::Idle(IdleReason::Hidden))
        .unwrap();
    h.m.typing(at(2), ConnId(1), &room("r"), true).unwrap();
    h.m.read(at(2), ConnId(1), &room("r"), 9).unwrap();
    assert!(h.names().is_empty(), "nothing leaks while invisible");
    assert_eq!(h.m.status_of(&user("ana")).0, Status::Invisible);
    h.m.set_status(at(3), ConnId(1), Status::Busy, None)
        .unwrap();
    let ev = h.events();
    assert_eq!(ev.len(), 1);
    match &ev[0].diff {
        Diff::UserConnected { presence } => {
            assert_eq!(presence.state, PresenceState::Idle);
            assert_eq!(presence.status, Status::Busy);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn status_changes_are_announced_once() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.names();
    let text = StatusText::new("lunch").unwrap();
    assert!(
        h.m.set_status(T0, ConnId(1), Status::Away, text.clone())
            .unwrap()
    );
    assert!(!h.m.set_status(T0, ConnId(1), Status::Away, text).unwrap());
    let ev = h.events();
    assert_eq!(ev.len(), 1);
    assert!(ev[0].global);
    assert_eq!(ev[0].name(), "status");
}

#[test]
fn connection_limit_evicts_detached_before_refusing() {
    let mut h = Harness::new();
    for i in 0..MAX_CONNECTIONS_PER_USER as u64 {
        h.connect(T0, "ana", i);
    }
    assert_eq!(
        h.m.connect(
            at(1),
            user("ana"),
            ConnId(999),
            token(999),
            None,
            Activity::Active
        ),
        Err(MachineError::TooManyConnections)
    );
    h.m.dropped(at(1), ConnId(3));
    h.connect(at(2), "ana", 999);
    assert_eq!(
        h.m.connections_of(&user("ana")).len(),
        MAX_CONNECTIONS_PER_USER
    );
    assert_eq!(h.m.user_of(ConnId(3)), None);
}

#[test]
fn duplicate_ids_are_refused() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    assert_eq!(
        h.m.connect(T0, user("bob"), ConnId(1), token(7), None, Activity::Active),
        Err(MachineError::DuplicateConnection)
    );
}

#[test]
fn a_user_record_round_trips_through_a_new_machine() {
    let mut m = Machine::new(policy());
    m.connect(T0, user("ana"), ConnId(1), token(1), None, Activity::Active)
        .unwrap();
    m.join(T0, ConnId(1), room("r")).unwrap();
    m.set_status(
        T0,
        ConnId(1),
        Status::Busy,
        StatusText::new("focus").unwrap(),
    )
    .unwrap();
    m.read(T0, ConnId(1), &room("r"), 42).unwrap();
    m.leaving(T0.after(Duration::from_secs(1)), ConnId(1));
    m.tick(T0.after(Duration::from_secs(3)));
    let record = m.user_record(&user("ana")).unwrap();
    assert_eq!(record.status, Status::Busy);
    assert_eq!(record.receipts, [(room("r"), 42)]);
    assert!(record.last_seen.is_some() && record.gone.is_some());
    let json = serde_json::to_string(&record).unwrap();
    let back: UserRecord = serde_json::from_str(&json).unwrap();
    let mut fresh = Machine::new(policy());
    fresh.restore_user(T0, user("ana"), back);
    assert_eq!(fresh.view(&user("ana")), m.view(&user("ana")));
    assert_eq!(fresh.user_record(&user("ana")), Some(record));
}

#[test]
fn a_restored_connection_resumes_silently_within_the_grace() {
    let mut m = Machine::new(policy());
    let idle = Activity::Idle(IdleReason::Hidden);
    m.connect(T0, user("ana"), ConnId(7), token(7), None, idle)
        .unwrap();
    m.join(T0, ConnId(7), room("r")).unwrap();
    let saved = m.conn_records();
    let mut fresh = Machine::new(policy());
    for c in saved {
        fresh.restore_conn(T0, c).unwrap();
    }
    fresh.drain_events().for_each(drop);
    assert_eq!(fresh.members(&room("r")).len(), 1, "shown during the grace");
    let out = fresh
        .connect(
            T0.after(Duration::from_secs(5)),
            user("ana"),
            ConnId(8),
            token(8),
            Some(&token(7)),
            idle,
        )
        .unwrap();
    assert!(out.resumed);
    assert_eq!(out.conn, ConnId(7));
    assert_eq!(fresh.rooms_of(ConnId(7)), [room("r")]);
    assert_eq!(fresh.drain_events().count(), 0, "observers see nothing");
    // One that does not come back goes offline after the grace.
    let mut lonely = Machine::new(policy());
    for c in m.conn_records() {
        lonely.restore_conn(T0, c).unwrap();
    }
    lonely.drain_events().for_each(drop);
    lonely.tick(T0.after(Duration::from_secs(10)));
    let names: Vec<&str> = lonely.drain_events().map(|e| e.name()).collect();
    assert_eq!(names, ["user_disconnected"]);
}

#[test]
fn offline_users_are_forgotten_by_age_then_by_count() {
    let mut m = Machine::new(policy());
    for (n, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let rec = UserRecord {
            status: Status::Away,
            text: None,
            last_seen: None,
            gone: Some(Millis(1000 * (n as u64 + 1))),
            receipts: Vec::new(),
            privacy: Default::default(),
        };
        m.restore_user(Millis(0), user(name), rec);
    }
    m.connect(
        Millis(0),
        user("online"),
        ConnId(1),
        token(1),
        None,
        Activity::Active,
    )
    .unwrap();
    let keep = |secs, max| Retention {
        keep_for: Duration::from_secs(secs),
        max_offline: max,
    };
    // At 4.5 s with 2 s kept: a (1 s) and b (2 s) are too old.
    assert_eq!(
        m.forget_offline(Millis(4500), keep(2, 10)),
        [user("a"), user("b")]
    );
    assert_eq!(m.forget_offline(Millis(4500), keep(60, 1)), [user("c")]);
    assert!(m.view(&user("d")).is_some());
    assert!(m.view(&user("online")).is_some(), "connected users stay");
}

#[test]
fn retention_keeps_the_offline_in_order_of_departure_and_forgets_in_batches() {
    let mut m = Machine::new(policy());
    let exact = |m: &Machine| assert!(m.offline_index_is_exact());
    // Known before connecting (a token's info), then connected.
    m.set_info(T0, &user("ana"), None);
    exact(&m);
    m.connect(T0, user("ana"), ConnId(1), token(1), None, Activity::Active)
        .unwrap();
    exact(&m);
    // Settings of a user never connected here; one restored from disk.
    m.set_privacy(T0, &user("bo"), None, None);
    m.adopt_privacy(T0, &user("cy"), Default::default(), T0);
    let rec = UserRecord {
        status: Status::Away,
        text: None,
        last_seen: None,
        gone: None,
        receipts: Vec::new(),
        privacy: Default::default(),
    };
    m.restore_user(T0, user("di"), rec.clone());
    exact(&m);
    // Ana leaves: offline after the grace, and back.
    m.leaving(T0, ConnId(1));
    let gone = T0
        .after(m.policy().leave_grace)
        .after(Duration::from_millis(1));
    m.tick(gone);
    exact(&m);
    m.connect(
        gone,
        user("ana"),
        ConnId(2),
        token(2),
        None,
        Activity::Active,
    )
    .unwrap();
    exact(&m);
    // Many due at once: a batch at a time, the longest gone first.
    for i in 0..FORGET_AT_ONCE + 5 {
        m.restore_user(T0, user(&format!("u{i:05}")), rec.clone());
    }
    let all = Retention {
        keep_for: Duration::ZERO,
        max_offline: 1_000_000,
    };
    let later = gone.after(Duration::from_secs(1));
    let first = m.forget_offline(later, all);
    assert_eq!(first.len(), FORGET_AT_ONCE);
    assert!(!first.contains(&user("ana")), "connected users stay");
    exact(&m);
    let rest = m.forget_offline(later, all);
    assert_eq!(rest.len(), 8, "3 + 10,005 offline, less a batch");
    assert!(m.forget_offline(later, all).is_empty());
    assert!(m.view(&user("ana")).is_some());
    exact(&m);
}

fn obj(s: &str) -> JsonObject {
    JsonObject::parse(s, 1024).unwrap()
}

#[test]
fn data_is_announced_once_to_rooms_and_watchers_and_goes_with_the_user() {
    let mut h = Harness::new();
    h.connect(at(0), "ana", 1);
    h.connect(at(0), "ana", 2);
    h.m.join(at(0), ConnId(1), room("r")).unwrap();
    h.names();
    assert!(
        h.m.set_data(at(1), ConnId(1), Some(obj(r#"{"viewing":"Q3"}"#)))
            .unwrap()
    );
    let ev = h.events();
    assert_eq!(ev.len(), 1);
    assert!(ev[0].global);
    assert_eq!(ev[0].rooms, [room("r")]);
    assert_eq!(
        ev[0].diff,
        Diff::Data {
            user: user("ana"),
            info: None,
            data: Some(obj(r#"{"viewing":"Q3"}"#))
        }
    );
    // The same object again, from the other tab: no change.
    assert!(
        !h.m.set_data(at(2), ConnId(2), Some(obj(r#"{"viewing":"Q3"}"#)))
            .unwrap()
    );
    assert_eq!(h.names(), Vec::<&str>::new());
    // Latest wins over the tabs.
    h.m.set_data(at(3), ConnId(2), Some(obj(r#"{"viewing":"Q4"}"#)))
        .unwrap();
    assert_eq!(h.names(), ["data"]);
    let v = h.m.view(&user("ana")).unwrap();
    assert_eq!(v.data, Some(obj(r#"{"viewing":"Q4"}"#)));
    // Gone for good: offline views carry none, and it does not come back.
    h.m.leaving(at(4), ConnId(1));
    h.m.leaving(at(4), ConnId(2));
    h.m.tick(at(10));
    assert_eq!(h.names(), ["user_disconnected"]);
    assert_eq!(h.m.view(&user("ana")).unwrap().data, None);
    h.connect(at(20), "ana", 3);
    let ev = h.events();
    match &ev[0].diff {
        Diff::UserConnected { presence } => assert_eq!(presence.data, None),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_invisible_user_leaks_no_data_and_shows_it_when_visible_again() {
    let mut h = Harness::new();
    h.connect(at(0), "ana", 1);
    h.m.set_status(at(1), ConnId(1), Status::Invisible, None)
        .unwrap();
    h.names();
    h.m.set_data(at(2), ConnId(1), Some(obj(r#"{"x":1}"#)))
        .unwrap();
    assert_eq!(h.names(), Vec::<&str>::new(), "nothing while invisible");
    let v = h.m.view(&user("ana")).unwrap();
    assert_eq!((v.state, v.data), (PresenceState::Offline, None));
    h.m.set_status(at(3), ConnId(1), Status::Available, None)
        .unwrap();
    let ev = h.events();
    match &ev[0].diff {
        Diff::UserConnected { presence } => assert_eq!(presence.data, Some(obj(r#"{"x":1}"#))),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn info_comes_with_the_connection_and_the_latest_one_wins() {
    let mut h = Harness::new();
    h.m.set_info(at(0), &user("ana"), Some(obj(r#"{"name":"Ana"}"#)));
    assert_eq!(h.names(), Vec::<&str>::new(), "not online yet");
    h.connect(at(0), "ana", 1);
    match &h.events()[0].diff {
        Diff::UserConnected { presence } => {
            assert_eq!(presence.info, Some(obj(r#"{"name":"Ana"}"#)))
        }
        other => panic!("unexpected {other:?}"),
    }
    h.m.set_info(at(1), &user("ana"), Some(obj(r#"{"name":"Ana"}"#)));
    h.connect(at(1), "ana", 2);
    assert_eq!(h.names(), Vec::<&str>::new(), "the same info: no news");
    h.m.set_info(at(2), &user("ana"), Some(obj(r#"{"name":"Ana L."}"#)));
    assert_eq!(h.names(), ["data"]);
}

#[test]
fn a_room_left_by_a_users_last_connection_in_it_hears_nothing_after_the_leave() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.m.set_activity(T0, ConnId(1), Activity::Idle(IdleReason::Hidden))
        .unwrap();
    h.connect(T0, "ana", 2);
    h.m.join(T0, ConnId(2), room("r")).unwrap();
    h.events();
    h.m.dropped(at(1), ConnId(2));
    h.m.tick(at(20));
    let to_r: Vec<&str> = h
        .events()
        .iter()
        .filter(|e| e.rooms.contains(&room("r")))
        .map(|e| e.name())
        .collect();
    assert_eq!(to_r, ["user_left"], "not a user_idle after it");
}

/// A connection handed to another node (a resume there) resumes nothing here any more, stays
/// for the leave grace without a word, and comes back there with its rooms under a new token.
#[test]
fn a_connection_handed_over_resumes_on_the_other_machine_only() {
    let mut a = Harness::new();
    a.connect(T0, "ana", 1);
    a.m.join(T0, ConnId(1), room("r")).unwrap();
    a.names();
    assert!(
        a.m.hand_over(at(1), &user("bob"), &token(1)).is_none(),
        "another user's token"
    );
    let (record, live) = a.m.hand_over(at(1), &user("ana"), &token(1)).unwrap();
    assert!(live, "the socket is superseded by the caller");
    assert_eq!(record.rooms, [room("r")]);
    assert!(
        a.m.hand_over(at(1), &user("ana"), &token(1)).is_none(),
        "once"
    );
    let back = a.resume(at(2), "ana", 2, 1);
    assert!(!back.resumed, "the token no longer resumes here");
    a.m.tick(at(3));
    assert_eq!(
        a.names(),
        ["user_left"],
        "conn 2 never joined r; ana stays online"
    );
    assert_eq!(a.m.connections_of(&user("ana")), [ConnId(2)]);

    let mut b = Harness::new();
    let mut moved = record;
    moved.conn = ConnId(7);
    moved.token = token(7);
    b.m.restore_conn(at(1), moved).unwrap();
    let resumed = b.resume(at(1), "ana", 8, 7);
    assert!(resumed.resumed);
    assert_eq!(resumed.token, token(7));
    assert_eq!(b.m.rooms_of(ConnId(7)), [room("r")]);
}

/// A receipt belongs to the room: it stays after its reader leaves or goes offline (the most
/// advanced `RECEIPTS_KEPT` of those), a marker read while invisible is never shown, and a
/// forgotten user's go with them.
#[test]
fn receipts_outlive_their_readers_connections() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.connect(T0, "eve", 2);
    h.m.join(T0, ConnId(1), room("r")).unwrap();
    h.m.join(T0, ConnId(2), room("r")).unwrap();
    h.m.read(T0, ConnId(1), &room("r"), 1042).unwrap();
    h.m.set_status(at(1), ConnId(2), Status::Invisible, None)
        .unwrap();
    h.m.read(at(1), ConnId(2), &room("r"), 1043).unwrap();
    h.m.dropped(at(2), ConnId(1));
    h.m.dropped(at(2), ConnId(2));
    h.m.tick(at(100));
    h.connect(at(100), "bob", 3);
    h.m.join(at(100), ConnId(3), room("r")).unwrap();
    let shown: Vec<(String, u64)> =
        h.m.receipts_in(&room("r"))
            .into_iter()
            .map(|r| (r.user.to_string(), r.marker))
            .collect();
    assert_eq!(
        shown,
        [("ana".to_owned(), 1042)],
        "offline ana still; invisible eve never"
    );
    let readers = crate::receipts::readers(h.m.reads_in(&room("r")), 1042, None, 20);
    assert_eq!(readers.count, 1);
    // Past the retention, ana is forgotten with her receipts.
    let retention = Retention {
        keep_for: Duration::from_secs(1),
        max_offline: 1_000,
    };
    h.m.forget_offline(at(200), retention);
    assert!(h.m.receipts_in(&room("r")).is_empty());
}

/// The `viewing` events of a harness's drained events: (conn, room).
fn views(events: &[Event]) -> Vec<(u64, Option<&str>)> {
    events
        .iter()
        .filter_map(|e| match &e.diff {
            Diff::Viewing { conn, room, .. } => {
                assert!(e.rooms.is_empty() && !e.global, "routed nowhere: {e:?}");
                Some((conn.0, room.as_ref().map(RoomId::as_str)))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn view_changes_are_events_only_when_asked_and_only_when_the_view_changes() {
    let mut h = Harness::new();
    h.connect(T0, "ana", 1);
    h.m.join(T0, ConnId(1), room("r")).unwrap();
    h.m.set_view(at(1), ConnId(1), Some(room("r"))).unwrap();
    assert_eq!(views(&h.events()), [], "off by default");

    let mut h = Harness {
        m: Machine::new(policy()).with_view_events(true),
    };
    h.connect(T0, "ana", 1);
    h.m.set_device(ConnId(1), DeviceKind::Desktop).unwrap();
    h.m.join(T0, ConnId(1), room("r")).unwrap();
    h.m.join(T0, ConnId(1), room("s")).unwrap();
    h.events();
    h.m.set_view(at(1), ConnId(1), Some(room("r"))).unwrap();
    let ev = h.events();
    assert_eq!(
        ev,
        [Event {
            at: at(1),
            diff: Diff::Viewing {
                user: user("ana"),
                node: None,
                conn: ConnId(1),
                device: DeviceKind::Desktop,
                room: Some(room("r")),
            },
            rooms: vec![],
            global: false,
        }]
    );
    h.m.set_view(at(2), ConnId(1), Some(room("r"))).unwrap();
    assert_eq!(views(&h.events()), [], "the same view: no news");
    assert_eq!(
        h.m.set_view(at(2), ConnId(1), Some(room("elsewhere"))),
        Err(MachineError::NotInRoom)
    );
    h.m.set_view(at(3), ConnId(1), Some(room("s"))).unwrap();
    h.m.set_view(at(4), ConnId(1), None).unwrap();
    h.m.set_view(at(5), ConnId(1), None).unwrap();
    assert_eq!(views(&h.events()), [(1, Some("s")), (1, None)]);
}

#[test]
fn a_view_ends_with_a_viewing_null_when_its_room_is_left_or_its_connection_goes() {
    let mut h = Harness {
        m: Machine::new(policy()).with_view_events(true),
    };
    h.connect(T0, "ana", 1);
    h.m.join(T0, ConnId(1), room("r")).unwrap();
    h.m.set_view(T0, ConnId(1), Some(room("r"))).unwrap();
    h.m.leave(at(1), ConnId(1), &room("r")).unwrap();
    assert_eq!(views(&h.events()), [(1, Some("r")), (1, None)]);
    assert_eq!(h.m.devices(at(1), &user("ana"))[0].view, None);

    h.m.join(at(2), ConnId(1), room("r")).unwrap();
    h.m.set_view(at(2), ConnId(1), Some(room("r"))).unwrap();
    h.events();
    // A drop and a resume within the grace: the view is kept, no news.
    h.m.dropped(at(3), ConnId(1));
    h.resume(at(4), "ana", 2, 1);
    assert_eq!(views(&h.events()), []);
    // Gone for good: the view ends before the user goes offline.
    h.m.dropped(at(5), ConnId(1));
    h.m.tick(at(60));
    let ev = h.events();
    assert_eq!(views(&ev), [(1, None)]);
    assert_eq!(ev.last().map(Event::name), Some("user_disconnected"));
}

#[test]
fn an_invisible_users_views_reach_the_host_and_no_observer() {
    let mut h = Harness {
        m: Machine::new(policy()).with_view_events(true),
    };
    h.connect(T0, "ana", 1);
    h.m.join(T0, ConnId(1), room("r")).unwrap();
    h.m.set_status(T0, ConnId(1), Status::Invisible, None)
        .unwrap();
    h.events();
    h.m.set_view(at(1), ConnId(1), Some(room("r"))).unwrap();
    assert_eq!(views(&h.events()), [(1, Some("r"))]);
}
