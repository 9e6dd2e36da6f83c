//! Tests of the cluster rule: exact cases, properties over random record
//! streams, and agreement with the single-node machine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::ids::{ConnId, ResumeToken};
use crate::machine::Machine;
use crate::object::JsonObject;
use crate::policy::TimingPolicy;
use crate::presence::{IdleReason, PresenceState};

use IdleReason::*;

const T0: Millis = Millis(1_000_000);

fn at(secs: u64) -> Millis {
    T0.after(Duration::from_secs(secs))
}

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn room(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

fn rooms(names: &[&str]) -> BTreeSet<RoomId> {
    names.iter().map(|s| room(s)).collect()
}

fn text(s: &str) -> Option<StatusText> {
    StatusText::new(s).unwrap()
}

/// A record of a node holding the user in `rs`, typing in `ts`.
fn rec(shown: Shown, rs: &[&str], ts: &[&str]) -> NodeRecord {
    let mut r = NodeRecord::released(None, Status::Available, None, Millis(0));
    r.shown = shown;
    r.rooms = rs.iter().map(|s| room(s)).collect();
    r.rooms.sort();
    r.typing = ts.iter().map(|s| room(s)).collect();
    r.typing.sort();
    if shown == Shown::Active {
        r.last_active = Some(T0);
    }
    r
}

fn with_status(mut r: NodeRecord, status: Status, tx: &str, set_at: Millis) -> NodeRecord {
    r.status = status;
    r.text = text(tx);
    r.status_at = set_at;
    r
}

fn live(_: &str) -> Liveness {
    Liveness::Live
}

/// The records `(incarnation, record)`, each at sequence 1, viewed all live.
fn view_of(recs: &[(&str, NodeRecord)]) -> ClusterView {
    records_of(recs).view(live)
}

fn records_of(recs: &[(&str, NodeRecord)]) -> Records {
    let mut r = Records::default();
    for (inc, rec) in recs {
        assert!(r.apply(inc, 1, rec.clone()));
    }
    r
}

/// A visible view in `rs`, typing in `ts`, with the given state.
fn online(shown: Shown, rs: &[&str], ts: &[&str]) -> ClusterView {
    view_of(&[("a#1", rec(shown, rs, ts))])
}

/// Events as `(name, rooms, global)`.
fn kinds(events: &[Event]) -> Vec<(&'static str, Vec<&str>, bool)> {
    events
        .iter()
        .map(|e| {
            (
                e.name(),
                e.rooms.iter().map(RoomId::as_str).collect(),
                e.global,
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The merge.

#[test]
fn active_on_any_live_node_wins() {
    let v = view_of(&[
        ("a#1", rec(Shown::Idle(Locked), &[], &[])),
        ("b#1", rec(Shown::Active, &[], &[])),
        ("c#1", rec(Shown::Idle(NoInput), &[], &[])),
        ("d#1", rec(Shown::Offline, &[], &[])),
    ]);
    assert_eq!(v.shown, Shown::Active);
    assert!(v.visible());
    assert_eq!(v.last_active, Some(T0));
}

#[test]
fn active_on_a_dead_node_does_not_count() {
    let r = records_of(&[
        ("a#1", rec(Shown::Idle(Hidden), &[], &[])),
        ("b#1", rec(Shown::Active, &[], &[])),
    ]);
    let v = r.view(|inc| {
        if inc == "b#1" {
            Liveness::Gone(at(5))
        } else {
            Liveness::Live
        }
    });
    assert_eq!(v.shown, Shown::Idle(Hidden));
    assert_eq!(v.last_active, None, "only live nodes' last-active counts");
}

#[test]
fn all_idle_takes_the_most_present_reason() {
    let idle = |rs: &[IdleReason]| {
        let recs: Vec<(String, NodeRecord)> = rs
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("n{i}#1"), rec(Shown::Idle(*r), &[], &[])))
            .collect();
        let recs: Vec<(&str, NodeRecord)> =
            recs.iter().map(|(i, r)| (i.as_str(), r.clone())).collect();
        view_of(&recs).shown
    };
    assert_eq!(
        idle(&[Locked, Hidden, NoInput, Blurred]),
        Shown::Idle(NoInput)
    );
    assert_eq!(idle(&[Locked, Hidden, Blurred]), Shown::Idle(Blurred));
    assert_eq!(idle(&[Locked, Hidden]), Shown::Idle(Hidden));
    assert_eq!(idle(&[Locked, Locked]), Shown::Idle(Locked));
    assert_eq!(idle(&[]), Shown::Offline);
}

#[test]
fn nobody_holding_the_user_is_offline() {
    let v = view_of(&[
        (
            "a#1",
            NodeRecord::released(Some(at(3)), Status::Busy, None, at(1)),
        ),
        (
            "b#1",
            NodeRecord::released(Some(at(7)), Status::Away, None, at(2)),
        ),
    ]);
    assert_eq!(v.shown, Shown::Offline);
    assert_eq!(v.last_seen, Some(at(7)), "the latest last-seen");
    assert_eq!(Records::default().view(live), ClusterView::offline());
}

#[test]
fn the_latest_status_wins_and_ties_go_to_the_greater_incarnation() {
    let a = with_status(rec(Shown::Active, &[], &[]), Status::Busy, "a", at(2));
    let b = with_status(rec(Shown::Active, &[], &[]), Status::Away, "b", at(1));
    let v = view_of(&[("a#1", a.clone()), ("b#1", b)]);
    assert_eq!(
        (v.status, v.text, v.status_at),
        (Status::Busy, text("a"), at(2))
    );

    let b = with_status(rec(Shown::Active, &[], &[]), Status::Away, "b", at(2));
    let v = view_of(&[("b#1", b.clone()), ("a#1", a.clone())]);
    assert_eq!((v.status, v.text.clone()), (Status::Away, text("b")));
    let v2 = view_of(&[("a#1", a), ("b#1", b)]);
    assert_eq!(v, v2, "arrival order does not matter");
}

#[test]
fn a_status_set_anywhere_beats_an_unknown_one() {
    let a = rec(Shown::Active, &[], &[]);
    let b = with_status(rec(Shown::Offline, &[], &[]), Status::Busy, "", Millis(1));
    let v = view_of(&[("z#1", a), ("b#1", b)]);
    assert_eq!(v.status, Status::Busy);
}

#[test]
fn invisible_as_latest_status_is_offline() {
    let a = with_status(
        rec(Shown::Active, &["r1"], &["r1"]),
        Status::Busy,
        "x",
        at(1),
    );
    let b = with_status(
        rec(Shown::Idle(NoInput), &["r2"], &[]),
        Status::Invisible,
        "",
        at(2),
    );
    let v = view_of(&[("a#1", a.clone()), ("b#1", b.clone())]);
    assert_eq!(v.shown, Shown::Offline);
    assert!(!v.visible());
    assert_eq!(v.status, Status::Invisible);
    assert_eq!(v.rooms, rooms(&["r1", "r2"]), "still in its rooms");
    assert!(!v.shown_in(&room("r1")));
    assert!(!v.typing_in(&room("r1")));
    let p = v.presence(&user("u"));
    assert_eq!(p.state, PresenceState::Offline);
    assert_eq!(p.status, Status::Available, "invisible is never shown");
    assert_eq!(p.text, None);
    assert_eq!(p.last_active, None);

    // An older invisible loses to a newer visible status.
    let b = with_status(b, Status::Invisible, "", Millis(1));
    let v = view_of(&[("a#1", a), ("b#1", b)]);
    assert_eq!((v.shown, v.status), (Shown::Active, Status::Busy));
}

#[test]
fn a_newer_incarnation_of_the_same_node_supersedes_the_older() {
    // Node `a` lost its lease and went on as `a.2`; its old record (not
    // cleaned yet, its lease not yet judged) still holds the user, who left.
    let mut r = Records::default();
    r.apply("a.1", 5, rec(Shown::Active, &["r1"], &["r1"]));
    let left = NodeRecord::released(Some(at(8)), Status::Available, None, Millis(0));
    r.apply("a.2", 9, left);
    let v = r.view(live);
    assert_eq!(v.shown, Shown::Offline);
    assert!(v.rooms.is_empty() && v.typing.is_empty());
    assert_eq!(v.last_seen, Some(at(8)));
    // The newer record holding the user speaks for the node alone.
    r.apply("a.2", 10, rec(Shown::Idle(Hidden), &["r2"], &[]));
    let v = r.view(live);
    assert_eq!((v.shown, v.rooms), (Shown::Idle(Hidden), rooms(&["r2"])));
    // Another node is never superseded, whatever its sequence ("ab" is not
    // "a").
    r.apply("ab.1", 1, rec(Shown::Active, &["r3"], &[]));
    let v = r.view(live);
    assert_eq!((v.shown, v.rooms), (Shown::Active, rooms(&["r2", "r3"])));
}

#[test]
fn a_gone_incarnation_holds_nothing() {
    let a = rec(Shown::Active, &["r1", "r2"], &["r1"]);
    let b = rec(Shown::Idle(Hidden), &["r3"], &["r3"]);
    let r = records_of(&[("a#1", a), ("b#1", b)]);
    let gone_a = |inc: &str| {
        if inc == "a#1" {
            Liveness::Gone(at(9))
        } else {
            Liveness::Live
        }
    };
    let v = r.view(gone_a);
    assert_eq!(v.shown, Shown::Idle(Hidden));
    assert_eq!(v.rooms, rooms(&["r3"]));
    assert_eq!(v.typing, rooms(&["r3"]));
    assert!(v.last_seen >= Some(at(9)));

    let v = r.view(|_| Liveness::Gone(at(9)));
    assert_eq!(v.shown, Shown::Offline);
    assert!(v.rooms.is_empty() && v.typing.is_empty());
    assert_eq!(v.last_seen, Some(at(9)));
    assert_eq!(v.presence(&user("u")).last_seen, Some(at(9)));

    // An earlier last-seen moves up to the death; a later one stays.
    let mut c = rec(Shown::Active, &[], &[]);
    c.last_seen = Some(at(20));
    let v = records_of(&[("c#1", c)]).view(|_| Liveness::Gone(at(9)));
    assert_eq!(v.last_seen, Some(at(20)));
    // A record that already held nothing keeps its last-seen.
    let d = NodeRecord::released(Some(at(2)), Status::Available, None, Millis(0));
    let v = records_of(&[("d#1", d)]).view(|_| Liveness::Gone(at(9)));
    assert_eq!(v.last_seen, Some(at(2)));
}

#[test]
fn expired_records_hold_nothing_but_keep_the_status() {
    let a = with_status(
        rec(Shown::Active, &["r1"], &["r1"]),
        Status::Busy,
        "hi",
        at(1),
    );
    assert!(a.holds());
    let e = a.expired(at(4));
    assert!(!e.holds());
    assert_eq!(e.shown, Shown::Offline);
    assert!(e.rooms.is_empty() && e.typing.is_empty());
    assert_eq!(e.last_active, None);
    assert_eq!(e.last_seen, Some(at(4)));
    assert_eq!(
        (e.status, e.text, e.status_at),
        (Status::Busy, text("hi"), at(1))
    );
    // An invisible user's last-seen does not move to the death.
    let mut inv = with_status(
        rec(Shown::Active, &["r1"], &[]),
        Status::Invisible,
        "",
        at(1),
    );
    inv.last_seen = Some(at(2));
    assert_eq!(inv.expired(at(4)).last_seen, Some(at(2)));
    inv.last_seen = None;
    assert_eq!(inv.expired(at(4)).last_seen, None);
}

#[test]
fn status_survives_a_node_letting_the_user_go() {
    let gone = NodeRecord::released(Some(at(3)), Status::Busy, text("lunch"), at(2));
    assert!(!gone.holds());
    let other = rec(Shown::Active, &[], &[]);
    let v = view_of(&[("a#1", gone.clone()), ("b#1", other)]);
    assert_eq!((v.status, v.text.clone()), (Status::Busy, text("lunch")));
    assert_eq!(v.presence(&user("u")).status, Status::Busy);
    // Also from a dead incarnation.
    let r = records_of(&[("a#1", gone), ("b#1", rec(Shown::Active, &[], &[]))]);
    let v = r.view(|inc| {
        if inc == "a#1" {
            Liveness::Gone(at(5))
        } else {
            Liveness::Live
        }
    });
    assert_eq!(v.status, Status::Busy);
    // A record in rooms while invisible on its node holds the user.
    assert!(rec(Shown::Offline, &["r1"], &[]).holds());
}

#[test]
fn typing_only_in_rooms_the_user_is_in() {
    let v = view_of(&[
        ("a#1", rec(Shown::Active, &["r1"], &["r1", "r2"])),
        ("b#1", rec(Shown::Active, &["r3"], &[])),
    ]);
    assert_eq!(v.typing, rooms(&["r1"]));
    // Typing on one node counts in a room held on another.
    let v = view_of(&[
        ("a#1", rec(Shown::Active, &[], &["r3"])),
        ("b#1", rec(Shown::Active, &["r3"], &[])),
    ]);
    assert_eq!(v.typing, rooms(&["r3"]));
    assert!(v.typing_in(&room("r3")));
}

#[test]
fn records_take_only_newer_sequences() {
    let mut r = Records::default();
    assert!(r.is_empty());
    assert!(r.apply("a#1", 2, rec(Shown::Active, &[], &[])));
    assert!(
        !r.apply("a#1", 2, rec(Shown::Offline, &[], &[])),
        "duplicate"
    );
    assert!(!r.apply("a#1", 1, rec(Shown::Offline, &[], &[])), "late");
    assert_eq!(
        r.get("a#1").map(|(s, r)| (s, r.shown)),
        Some((2, Shown::Active))
    );
    assert!(r.apply("a#1", 3, rec(Shown::Idle(Locked), &[], &[])));
    assert!(r.apply("b#1", 1, rec(Shown::Active, &[], &[])));
    assert_eq!(
        r.iter().map(|(i, s, _)| (i, s)).collect::<Vec<_>>(),
        [("a#1", 3), ("b#1", 1)]
    );
    assert!(r.remove("a#1"));
    assert!(!r.remove("a#1"));
    assert_eq!(r.view(live).shown, Shown::Active);
}

#[test]
fn records_round_trip_on_the_wire() {
    for shown in [
        Shown::Active,
        Shown::Offline,
        Shown::Idle(NoInput),
        Shown::Idle(Blurred),
        Shown::Idle(Hidden),
        Shown::Idle(Locked),
    ] {
        let r = with_status(
            rec(shown, &["r1", "r2"], &["r2"]),
            Status::Away,
            "brb",
            at(1),
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<NodeRecord>(&json).unwrap(), r);
    }
    let bare: NodeRecord = serde_json::from_str(r#"{"s":"o"}"#).unwrap();
    assert_eq!(
        bare,
        NodeRecord::released(None, Status::Available, None, Millis(0))
    );
    assert!(serde_json::from_str::<NodeRecord>(r#"{"s":"away"}"#).is_err());
}

// ---------------------------------------------------------------------------
// Transitions.

#[test]
fn coming_online_is_one_global_connected_to_its_rooms() {
    let u = user("u");
    let after = online(Shown::Active, &["r1", "r2"], &[]);
    let ev = transitions(&u, &ClusterView::offline(), &after, at(1));
    assert_eq!(kinds(&ev), [("user_connected", vec!["r1", "r2"], true)]);
    assert_eq!(ev[0].at, at(1));
    assert_eq!(
        ev[0].diff,
        Diff::UserConnected {
            presence: after.presence(&u)
        }
    );
    match &ev[0].diff {
        Diff::UserConnected { presence } => {
            assert_eq!(presence.state, PresenceState::Active);
            assert_eq!(presence.last_active, Some(T0));
            assert_eq!(presence.last_seen, None);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn coming_online_while_typing_connects_first() {
    let u = user("u");
    let after = online(Shown::Idle(Blurred), &["r1"], &["r1"]);
    let ev = transitions(&u, &ClusterView::offline(), &after, at(1));
    assert_eq!(
        kinds(&ev),
        [
            ("user_connected", vec!["r1"], true),
            ("typing_started", vec!["r1"], false)
        ]
    );
}

#[test]
fn going_offline_is_one_global_disconnected_to_the_rooms_it_was_in() {
    let u = user("u");
    let before = online(Shown::Active, &["r1", "r2"], &[]);
    let after = view_of(&[(
        "a#1",
        NodeRecord::released(Some(at(3)), Status::Available, None, Millis(0)),
    )]);
    let ev = transitions(&u, &before, &after, at(5));
    assert_eq!(kinds(&ev), [("user_disconnected", vec!["r1", "r2"], true)]);
    assert_eq!(
        ev[0].diff,
        Diff::UserDisconnected {
            user: u.clone(),
            last_seen: Some(at(3))
        }
    );
    // Without a known last-seen, now.
    let ev = transitions(&u, &before, &ClusterView::offline(), at(5));
    assert_eq!(
        ev[0].diff,
        Diff::UserDisconnected {
            user: u,
            last_seen: Some(at(5))
        }
    );
}

#[test]
fn going_offline_while_typing_stops_the_typing_first() {
    let u = user("u");
    let before = online(Shown::Active, &["r1", "r2"], &["r1", "r2"]);
    let ev = transitions(&u, &before, &ClusterView::offline(), at(5));
    assert_eq!(
        kinds(&ev),
        [
            ("typing_stopped", vec!["r1"], false),
            ("typing_stopped", vec!["r2"], false),
            ("user_disconnected", vec!["r1", "r2"], true)
        ]
    );
}

#[test]
fn idle_and_active_are_global_to_the_rooms_it_stays_in() {
    let u = user("u");
    let active = online(Shown::Active, &["r1", "r2"], &[]);
    let idle = online(Shown::Idle(Hidden), &["r1", "r2"], &[]);
    let ev = transitions(&u, &active, &idle, at(1));
    assert_eq!(kinds(&ev), [("user_idle", vec!["r1", "r2"], true)]);
    assert_eq!(
        ev[0].diff,
        Diff::UserIdle {
            user: u.clone(),
            reason: Hidden
        }
    );
    let ev = transitions(&u, &idle, &active, at(2));
    assert_eq!(kinds(&ev), [("user_active", vec!["r1", "r2"], true)]);
    assert_eq!(ev[0].diff, Diff::UserActive { user: u.clone() });
    // A new idle reason is announced too.
    let locked = online(Shown::Idle(Locked), &["r1", "r2"], &[]);
    let ev = transitions(&u, &idle, &locked, at(3));
    assert_eq!(
        ev[0].diff,
        Diff::UserIdle {
            user: u.clone(),
            reason: Locked
        }
    );
    // With rooms changing at once: left rooms hear the user leave, kept
    // rooms the new state, joined rooms the user arrive (already idle).
    let moved = online(Shown::Idle(Hidden), &["r2", "r3"], &[]);
    let ev = transitions(&u, &active, &moved, at(4));
    assert_eq!(
        kinds(&ev),
        [
            ("user_left", vec!["r1"], false),
            ("user_idle", vec!["r2"], true),
            ("user_connected", vec!["r3"], false)
        ]
    );
    assert_eq!(
        ev[2].diff,
        Diff::UserConnected {
            presence: moved.presence(&u)
        }
    );
}

#[test]
fn joining_and_leaving_while_online_elsewhere_tells_that_room_only() {
    let u = user("u");
    let r1 = [
        ("a#1", rec(Shown::Active, &["r1"], &[])),
        ("b#1", rec(Shown::Active, &[], &[])),
    ];
    let r12 = [
        ("a#1", rec(Shown::Active, &["r1"], &[])),
        ("b#1", rec(Shown::Active, &["r2"], &[])),
    ];
    let (before, after) = (view_of(&r1), view_of(&r12));
    let ev = transitions(&u, &before, &after, at(1));
    assert_eq!(kinds(&ev), [("user_connected", vec!["r2"], false)]);
    assert_eq!(
        ev[0].diff,
        Diff::UserConnected {
            presence: after.presence(&u)
        }
    );
    let ev = transitions(&u, &after, &before, at(2));
    assert_eq!(kinds(&ev), [("user_left", vec!["r2"], false)]);
    assert_eq!(ev[0].diff, Diff::UserLeft { user: u.clone() });
    // The same room held on two nodes: one leaving changes nothing.
    let both = [
        ("a#1", rec(Shown::Active, &["r1"], &[])),
        ("b#1", rec(Shown::Active, &["r1"], &[])),
    ];
    assert!(transitions(&u, &view_of(&both), &view_of(&r1), at(3)).is_empty());
    // Leaving a room while typing in it stops the typing first.
    let typing = [
        ("a#1", rec(Shown::Active, &["r1"], &[])),
        ("b#1", rec(Shown::Active, &["r2"], &["r2"])),
    ];
    let ev = transitions(&u, &view_of(&typing), &before, at(4));
    assert_eq!(
        kinds(&ev),
        [
            ("typing_stopped", vec!["r2"], false),
            ("user_left", vec!["r2"], false)
        ]
    );
}

#[test]
fn a_status_change_while_visible_is_one_global_status() {
    let u = user("u");
    let a = rec(Shown::Active, &["r1"], &[]);
    let before = view_of(&[("a#1", a.clone())]);
    let after = view_of(&[("a#1", with_status(a.clone(), Status::Busy, "call", at(1)))]);
    let ev = transitions(&u, &before, &after, at(1));
    assert_eq!(kinds(&ev), [("status", vec!["r1"], true)]);
    assert_eq!(
        ev[0].diff,
        Diff::Status {
            user: u.clone(),
            status: Status::Busy,
            text: text("call")
        }
    );
    // The text alone counts.
    let after2 = view_of(&[("a#1", with_status(a.clone(), Status::Busy, "other", at(2)))]);
    assert_eq!(
        kinds(&transitions(&u, &after, &after2, at(2))),
        [("status", vec!["r1"], true)]
    );
    // The time alone does not.
    let after3 = view_of(&[("a#1", with_status(a, Status::Busy, "other", at(3)))]);
    assert!(transitions(&u, &after2, &after3, at(3)).is_empty());
}

#[test]
fn going_invisible_stops_typing_then_disconnects() {
    let u = user("u");
    let a = rec(Shown::Active, &["r1", "r2"], &["r2"]);
    let before = view_of(&[("a#1", a.clone())]);
    let after = view_of(&[("a#1", with_status(a.clone(), Status::Invisible, "", at(1)))]);
    let ev = transitions(&u, &before, &after, at(1));
    assert_eq!(
        kinds(&ev),
        [
            ("typing_stopped", vec!["r2"], false),
            ("user_disconnected", vec!["r1", "r2"], true)
        ]
    );
    assert_eq!(
        ev[1].diff,
        Diff::UserDisconnected {
            user: u.clone(),
            last_seen: Some(at(1))
        }
    );
    // Nothing while invisible.
    let moved = view_of(&[(
        "a#1",
        with_status(
            rec(Shown::Idle(Locked), &["r3"], &["r3"]),
            Status::Invisible,
            "",
            at(1),
        ),
    )]);
    assert!(transitions(&u, &after, &moved, at(2)).is_empty());
    // Back: connected everywhere, the typing it kept, no status event.
    let back = view_of(&[("a#1", with_status(a, Status::Away, "", at(3)))]);
    let ev = transitions(&u, &moved, &back, at(3));
    assert_eq!(
        kinds(&ev),
        [
            ("user_connected", vec!["r1", "r2"], true),
            ("typing_started", vec!["r2"], false)
        ]
    );
    match &ev[0].diff {
        Diff::UserConnected { presence } => assert_eq!(presence.status, Status::Away),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn the_last_seen_of_an_invisible_user_is_when_they_went_invisible() {
    let u = user("u");
    // An earlier visit left a last-seen on another node.
    let old = NodeRecord::released(Some(at(1)), Status::Available, None, Millis(0));
    let a = rec(Shown::Active, &["r1"], &[]);
    let before = view_of(&[("a#1", a.clone()), ("o#1", old.clone())]);
    let inv = with_status(a, Status::Invisible, "", at(5));
    let r = records_of(&[("a#1", inv), ("o#1", old)]);
    let after = r.view(live);
    let ev = transitions(&u, &before, &after, at(5));
    assert_eq!(
        ev.last().map(|e| &e.diff),
        Some(&Diff::UserDisconnected {
            user: u.clone(),
            last_seen: Some(at(5))
        })
    );
    assert_eq!(after.presence(&u).last_seen, Some(at(5)));
    // Its node dying later does not move it (nobody saw the user then).
    let dead = r.view(|inc| {
        if inc == "a#1" {
            Liveness::Gone(at(50))
        } else {
            Liveness::Live
        }
    });
    assert_eq!(dead.presence(&u).last_seen, Some(at(5)));
    assert!(dead.rooms.is_empty());
    assert!(transitions(&u, &after, &dead, at(50)).is_empty());
}

#[test]
fn typing_starts_and_stops_per_room() {
    let u = user("u");
    let none = online(Shown::Active, &["r1", "r2", "r3"], &[]);
    let some = online(Shown::Active, &["r1", "r2", "r3"], &["r1", "r3"]);
    let other = online(Shown::Active, &["r1", "r2", "r3"], &["r2", "r3"]);
    assert_eq!(
        kinds(&transitions(&u, &none, &some, at(1))),
        [
            ("typing_started", vec!["r1"], false),
            ("typing_started", vec!["r3"], false)
        ]
    );
    assert_eq!(
        kinds(&transitions(&u, &some, &other, at(2))),
        [
            ("typing_stopped", vec!["r1"], false),
            ("typing_started", vec!["r2"], false)
        ]
    );
    let ev = transitions(&u, &other, &none, at(3));
    assert_eq!(
        kinds(&ev),
        [
            ("typing_stopped", vec!["r2"], false),
            ("typing_stopped", vec!["r3"], false)
        ]
    );
    assert_eq!(ev[0].diff, Diff::TypingStopped { user: u.clone() });
    assert_eq!(
        transitions(&u, &none, &some, at(1))[0].diff,
        Diff::TypingStarted { user: u }
    );
}

#[test]
fn nothing_visible_changed_is_no_event() {
    let u = user("u");
    let v = online(Shown::Active, &["r1"], &["r1"]);
    assert!(transitions(&u, &v, &v, at(1)).is_empty());
    assert!(transitions(&u, &ClusterView::offline(), &ClusterView::offline(), at(1)).is_empty());
    // Offline, whatever else moves.
    let off1 = view_of(&[(
        "a#1",
        NodeRecord::released(Some(at(1)), Status::Busy, text("x"), at(1)),
    )]);
    let off2 = view_of(&[(
        "a#1",
        NodeRecord::released(Some(at(2)), Status::Away, None, at(2)),
    )]);
    assert!(transitions(&u, &off1, &off2, at(2)).is_empty());
    // Online: last-active and last-seen move silently, as on one node.
    let mut moved = v.clone();
    moved.last_active = Some(at(9));
    moved.last_seen = Some(at(9));
    moved.status_at = at(9);
    assert!(transitions(&u, &v, &moved, at(9)).is_empty());
    // A second node holding the same rooms.
    let two = view_of(&[
        ("a#1", rec(Shown::Active, &["r1"], &["r1"])),
        ("b#1", rec(Shown::Idle(Hidden), &["r1"], &[])),
    ]);
    assert!(transitions(&u, &v, &two, at(3)).is_empty());
}

// ---------------------------------------------------------------------------
// Properties over random record streams.

const ROOMS: [&str; 3] = ["r1", "r2", "r3"];

fn room_set(mask: u8) -> Vec<RoomId> {
    ROOMS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, r)| room(r))
        .collect()
}

fn inc_name(i: usize) -> String {
    format!("n{i}#7")
}

/// One generated update: which incarnation, what it now shows, and maybe a
/// new status.
#[derive(Clone, Debug)]
struct Step {
    inc: usize,
    shown: Shown,
    rooms: u8,
    typing: u8,
    status: Option<(Status, bool)>,
    /// A new `data`: cleared (`None`) or the object `{"k":n}`.
    data: Option<Option<u8>>,
}

fn shown_strategy() -> impl Strategy<Value = Shown> {
    prop_oneof![
        Just(Shown::Offline),
        Just(Shown::Active),
        Just(Shown::Idle(NoInput)),
        Just(Shown::Idle(Blurred)),
        Just(Shown::Idle(Hidden)),
        Just(Shown::Idle(Locked)),
    ]
}

fn status_strategy() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Available),
        Just(Status::Away),
        Just(Status::Busy),
        Just(Status::Invisible),
    ]
}

fn step_strategy(incs: usize) -> impl Strategy<Value = Step> {
    (
        0..incs,
        shown_strategy(),
        0u8..8,
        0u8..8,
        proptest::option::weighted(0.3, (status_strategy(), any::<bool>())),
        proptest::option::weighted(0.3, proptest::option::of(0u8..3)),
    )
        .prop_map(|(inc, shown, rooms, typing, status, data)| Step {
            inc,
            shown,
            rooms,
            typing,
            status,
            data,
        })
}

/// A message `(incarnation, seq, record)` with the time it was made.
#[derive(Clone, Debug)]
struct Msg {
    inc: String,
    seq: u64,
    rec: NodeRecord,
    now: Millis,
}

/// Turns steps into messages as nodes would publish them: whole records,
/// sequences growing per incarnation, a status kept until changed, status
/// times that grow (coarsely, so different nodes may tie). Shaped like a
/// machine's records: in rooms only while holding a connection, typing only
/// in its rooms, a last-seen only once it holds none.
fn messages(steps: &[Step]) -> Vec<Msg> {
    let mut seqs: BTreeMap<usize, u64> = BTreeMap::new();
    let mut statuses: BTreeMap<usize, (Status, Option<StatusText>, Millis)> = BTreeMap::new();
    let mut customs: BTreeMap<usize, Custom> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let now = Millis(1_000 + 10 * i as u64);
        let seq = seqs.entry(s.inc).or_insert(0);
        *seq += 1;
        let st = statuses
            .entry(s.inc)
            .or_insert((Status::Available, None, Millis(0)));
        if let Some((status, has_text)) = s.status {
            let tx = has_text.then(|| StatusText::new(&format!("t{i}")).unwrap().unwrap());
            *st = (status, tx, Millis(1_000 + 30 * (i as u64 / 3)));
        }
        let custom = customs.entry(s.inc).or_default();
        if let Some(d) = s.data {
            custom.data = d.map(|k| JsonObject::parse(&format!(r#"{{"k":{k}}}"#), 64).unwrap());
            custom.data_at = Millis(1_000 + 30 * (i as u64 / 3));
        }
        if s.shown == Shown::Offline {
            // As a machine does: data goes with the user's last connection.
            custom.data = None;
        }
        let custom = custom.clone();
        let (rooms, typing, last_seen) = if s.shown == Shown::Offline {
            (Vec::new(), Vec::new(), Some(now))
        } else {
            (room_set(s.rooms), room_set(s.rooms & s.typing), None)
        };
        out.push(Msg {
            inc: inc_name(s.inc),
            seq: *seq,
            rec: NodeRecord {
                shown: s.shown,
                last_active: (s.shown == Shown::Active).then_some(now),
                last_seen,
                rooms,
                typing,
                status: st.0,
                text: st.1.clone(),
                status_at: st.2,
                custom,
                ..NodeRecord::released(None, Status::Available, None, Millis(0))
            },
            now,
        });
    }
    out
}

/// What the observers of one user hold, built only from the events.
#[derive(Debug, Default)]
struct Observer {
    /// What watchers see: `None` while offline.
    global: Option<Seen>,
    /// What each room where the user is shown sees.
    rooms: BTreeMap<RoomId, Seen>,
    /// Rooms where the user is shown typing.
    typing: BTreeSet<RoomId>,
}

#[derive(Clone, Debug, PartialEq)]
struct Seen {
    shown: Shown,
    status: Status,
    text: Option<StatusText>,
    data: Option<JsonObject>,
}

fn seen_of(p: &PresenceView) -> Seen {
    let shown = match p.state {
        PresenceState::Active => Shown::Active,
        PresenceState::Idle => Shown::Idle(p.reason.expect("idle has a reason")),
        PresenceState::Offline => Shown::Offline,
    };
    Seen {
        shown,
        status: p.status,
        text: p.text.clone(),
        data: p.data.clone(),
    }
}

impl Observer {
    /// Folds one event in, checking it makes sense to an observer; returns
    /// the last-seen of a global disconnect.
    fn apply(
        &mut self,
        u: &UserId,
        e: &Event,
        now: Millis,
    ) -> Result<Option<Millis>, TestCaseError> {
        prop_assert_eq!(e.at, now);
        let mut gone_at = None;
        match &e.diff {
            Diff::UserConnected { presence } => {
                prop_assert_eq!(&presence.user, u);
                let seen = seen_of(presence);
                prop_assert!(seen.shown != Shown::Offline);
                prop_assert_eq!(presence.last_seen, None);
                if e.global {
                    prop_assert!(self.global.is_none(), "connected twice");
                    prop_assert!(self.rooms.is_empty());
                    self.global = Some(seen.clone());
                } else {
                    prop_assert_eq!(self.global.as_ref().map(|g| g.shown), Some(seen.shown));
                }
                for r in &e.rooms {
                    prop_assert!(
                        self.rooms.insert(r.clone(), seen.clone()).is_none(),
                        "joined twice"
                    );
                }
            }
            Diff::UserDisconnected { user, last_seen } => {
                prop_assert_eq!(user, u);
                prop_assert!(self.global.is_some(), "disconnected while offline");
                for r in &e.rooms {
                    prop_assert!(self.rooms.remove(r).is_some(), "left a room it was not in");
                    prop_assert!(
                        !self.typing.contains(r),
                        "typing outlives the user in {}",
                        r
                    );
                }
                if e.global {
                    prop_assert!(self.rooms.is_empty(), "some room was not told");
                    self.global = None;
                    gone_at = *last_seen;
                }
            }
            Diff::UserLeft { user } => {
                prop_assert_eq!(user, u);
                prop_assert!(!e.global, "leaving a room is the room's news");
                prop_assert!(self.global.is_some(), "left while offline");
                for r in &e.rooms {
                    prop_assert!(self.rooms.remove(r).is_some(), "left a room it was not in");
                    prop_assert!(
                        !self.typing.contains(r),
                        "typing outlives the room in {}",
                        r
                    );
                }
            }
            Diff::UserIdle { user, .. } | Diff::UserActive { user } => {
                prop_assert_eq!(user, u);
                prop_assert!(e.global);
                let shown = match e.diff {
                    Diff::UserIdle { reason, .. } => Shown::Idle(reason),
                    _ => Shown::Active,
                };
                let Some(g) = &mut self.global else {
                    return Err(TestCaseError::fail("state change while offline"));
                };
                prop_assert!(g.shown != shown, "no change announced");
                g.shown = shown;
                for r in &e.rooms {
                    let Some(s) = self.rooms.get_mut(r) else {
                        return Err(TestCaseError::fail("state to a room the user is not in"));
                    };
                    s.shown = shown;
                }
            }
            Diff::Status { user, status, text } => {
                prop_assert_eq!(user, u);
                prop_assert!(e.global);
                prop_assert!(*status != Status::Invisible);
                let Some(g) = &mut self.global else {
                    return Err(TestCaseError::fail("status while offline"));
                };
                g.status = *status;
                g.text = text.clone();
                // Rooms joined in the same change hear the status first and
                // get it again in their user_connected.
                for r in &e.rooms {
                    if let Some(s) = self.rooms.get_mut(r) {
                        s.status = *status;
                        s.text = text.clone();
                    }
                }
            }
            Diff::Data { user, info, data } => {
                prop_assert_eq!(user, u);
                prop_assert!(e.global);
                prop_assert_eq!(info, &None);
                let Some(g) = &mut self.global else {
                    return Err(TestCaseError::fail("data while offline"));
                };
                prop_assert!(&g.data != data, "no change announced");
                g.data = data.clone();
                for r in &e.rooms {
                    if let Some(s) = self.rooms.get_mut(r) {
                        s.data = data.clone();
                    }
                }
            }
            Diff::TypingStarted { user } => {
                prop_assert_eq!(user, u);
                prop_assert!(!e.global);
                prop_assert_eq!(e.rooms.len(), 1);
                prop_assert!(
                    self.rooms.contains_key(&e.rooms[0]),
                    "typing where not shown"
                );
                prop_assert!(self.typing.insert(e.rooms[0].clone()), "started twice");
            }
            Diff::TypingStopped { user } => {
                prop_assert_eq!(user, u);
                prop_assert!(!e.global);
                prop_assert_eq!(e.rooms.len(), 1);
                prop_assert!(self.typing.remove(&e.rooms[0]), "stopped while not typing");
            }
            other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
        }
        Ok(gone_at)
    }

    /// Checks the observers now see exactly `v`.
    fn check(&self, u: &UserId, v: &ClusterView) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.global.is_some(), v.visible());
        let want = v.visible().then(|| seen_of(&v.presence(u)));
        prop_assert_eq!(&self.global, &want);
        let shown: BTreeSet<RoomId> = ROOMS
            .iter()
            .map(|r| room(r))
            .filter(|r| v.shown_in(r))
            .collect();
        prop_assert_eq!(self.rooms.keys().cloned().collect::<BTreeSet<_>>(), shown);
        for s in self.rooms.values() {
            prop_assert_eq!(Some(s), want.as_ref());
        }
        let typing: BTreeSet<RoomId> = ROOMS
            .iter()
            .map(|r| room(r))
            .filter(|r| v.typing_in(r))
            .collect();
        prop_assert_eq!(&self.typing, &typing);
        Ok(())
    }
}

/// Steps, a liveness for each incarnation (`None`: live), a delivery order
/// (sort keys) and duplicates to deliver too.
type Case = (Vec<Step>, Vec<Option<u64>>, Vec<u32>, Vec<usize>);

fn case_strategy() -> impl Strategy<Value = Case> {
    (1usize..=4).prop_flat_map(|incs| {
        (
            proptest::collection::vec(step_strategy(incs), 1..24),
            proptest::collection::vec(proptest::option::weighted(0.3, 0u64..2_000), incs),
            proptest::collection::vec(any::<u32>(), 48),
            proptest::collection::vec(0usize..64, 0..16),
        )
    })
}

/// The messages in a shuffled order with duplicates mixed in.
fn delivery(msgs: &[Msg], keys: &[u32], dups: &[usize]) -> Vec<Msg> {
    let mut idx: Vec<usize> = (0..msgs.len()).collect();
    idx.extend(dups.iter().map(|d| d % msgs.len()));
    let mut keyed: Vec<(u32, usize)> = idx
        .into_iter()
        .enumerate()
        .map(|(p, i)| (keys[p % keys.len()], i))
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, i)| msgs[i].clone()).collect()
}

fn apply_all(msgs: &[Msg]) -> Records {
    let mut r = Records::default();
    for m in msgs {
        r.apply(&m.inc, m.seq, m.rec.clone());
    }
    r
}

fn liveness_of(map: &[Option<u64>]) -> impl Fn(&str) -> Liveness + '_ {
    move |inc: &str| {
        let i = (0..map.len())
            .find(|i| inc_name(*i) == inc)
            .expect("known incarnation");
        match map[i] {
            Some(t) => Liveness::Gone(Millis(1_000 + t)),
            None => Liveness::Live,
        }
    }
}

proptest! {
    /// The same messages in any order, with any duplication, give the same
    /// records and so the same view, live or with some nodes dead.
    #[test]
    fn views_converge_whatever_the_delivery((steps, gone, keys, dups) in case_strategy()) {
        let msgs = messages(&steps);
        let in_order = apply_all(&msgs);
        let shuffled = apply_all(&delivery(&msgs, &keys, &dups));
        prop_assert_eq!(&shuffled, &in_order);
        prop_assert_eq!(shuffled.view(live), in_order.view(live));
        prop_assert_eq!(shuffled.view(liveness_of(&gone)), in_order.view(liveness_of(&gone)));
        // Each incarnation ends at its last record.
        for m in &msgs {
            let (seq, rec) = in_order.get(&m.inc).unwrap();
            prop_assert!(seq >= m.seq);
            if seq == m.seq {
                prop_assert_eq!(rec, &m.rec);
            }
        }
    }

    /// An observer comparing each view with the last one it announced
    /// announces each change once, and the events it sent rebuild the view.
    #[test]
    fn transitions_announce_each_change_once_and_rebuild_the_view(
        (steps, gone, keys, dups) in case_strategy(),
        with_deaths in any::<bool>(),
    ) {
        let u = user("u");
        let msgs = messages(&steps);
        let liveness = liveness_of(&gone);
        let view = |r: &Records| if with_deaths { r.view(&liveness) } else { r.view(live) };
        let mut records = Records::default();
        let mut prev = ClusterView::offline();
        let mut obs = Observer::default();
        for m in delivery(&msgs, &keys, &dups) {
            records.apply(&m.inc, m.seq, m.rec.clone());
            let v = view(&records);
            let ev = transitions(&u, &prev, &v, m.now);
            prop_assert_eq!(ev.is_empty(), obs_sees_same(&u, &prev, &v));
            for e in &ev {
                if let Some(last_seen) = obs.apply(&u, e, m.now)? {
                    prop_assert_eq!(Some(last_seen), v.presence(&u).last_seen);
                }
            }
            obs.check(&u, &v)?;
            prev = v;
        }
        let last = view(&apply_all(&msgs));
        prop_assert_eq!(&prev, &last);
        // Replaying everything (duplicates, late) changes and says nothing.
        for m in &msgs {
            prop_assert!(!records.apply(&m.inc, m.seq, m.rec.clone()));
            let v = view(&records);
            prop_assert!(transitions(&u, &prev, &v, m.now).is_empty());
            prop_assert_eq!(&v, &prev);
        }
        // Jumping straight from offline tells a new observer the same.
        let mut fresh = Observer::default();
        for e in transitions(&u, &ClusterView::offline(), &last, Millis(9_999)) {
            fresh.apply(&u, &e, Millis(9_999))?;
        }
        fresh.check(&u, &last)?;
    }

    /// No change, no event.
    #[test]
    fn a_view_to_itself_is_silent((steps, gone, _, _) in case_strategy()) {
        let u = user("u");
        let msgs = messages(&steps);
        for n in 0..=msgs.len() {
            let r = apply_all(&msgs[..n]);
            for v in [r.view(live), r.view(liveness_of(&gone))] {
                prop_assert!(transitions(&u, &v, &v, Millis(5)).is_empty());
                prop_assert!(transitions(&u, &v, &v.clone(), Millis(5)).is_empty());
            }
        }
    }
}

/// Whether observers see no difference between two views.
fn obs_sees_same(u: &UserId, a: &ClusterView, b: &ClusterView) -> bool {
    let rooms = |v: &ClusterView| -> BTreeSet<RoomId> {
        v.rooms.iter().filter(|r| v.shown_in(r)).cloned().collect()
    };
    let typing = |v: &ClusterView| -> BTreeSet<RoomId> {
        v.typing
            .iter()
            .filter(|r| v.typing_in(r))
            .cloned()
            .collect()
    };
    let seen = |v: &ClusterView| v.visible().then(|| seen_of(&v.presence(u)));
    seen(a) == seen(b) && rooms(a) == rooms(b) && typing(a) == typing(b)
}

// ---------------------------------------------------------------------------
// One node's own record against its machine.

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

/// A machine whose own record is merged alone after every input, checking
/// the cluster rule shows what the machine shows and announces what it
/// announces, in the same order.
struct Single {
    m: Machine,
    u: UserId,
    prev: ClusterView,
}

impl Single {
    fn new() -> Self {
        Self {
            m: Machine::new(policy()),
            u: user("ana"),
            prev: ClusterView::offline(),
        }
    }

    fn connect(&mut self, now: Millis, conn: u64, activity: Activity) {
        let tok = ResumeToken::new(format!("tok{conn}")).unwrap();
        let u = self.u.clone();
        self.step(now, |m| {
            m.connect(now, u, ConnId(conn), tok, None, activity)
                .unwrap();
        });
    }

    /// Runs one input and checks the cluster rule agrees with the machine.
    #[track_caller]
    fn step(&mut self, now: Millis, f: impl FnOnce(&mut Machine)) {
        f(&mut self.m);
        let machine: Vec<Event> = self.m.drain_events().map(sorted).collect();
        let rec = self.m.node_record(&self.u).expect("seen here");
        let v = records_of(&[("me#1", rec)]).view(live);
        let cluster: Vec<Event> = transitions(&self.u, &self.prev, &v, now)
            .into_iter()
            .map(sorted)
            .collect();
        assert_eq!(cluster, machine, "events at {now:?}");
        assert_eq!(
            Some(v.presence(&self.u)),
            self.m.view(&self.u),
            "view at {now:?}"
        );
        let mine: BTreeSet<RoomId> = self.m.rooms_of_user(&self.u).into_iter().collect();
        assert_eq!(v.rooms, mine);
        for r in ROOMS.iter().map(|r| room(r)) {
            assert_eq!(
                v.typing_in(&r),
                self.m.typing_in(&r).contains(&self.u),
                "typing in {r}"
            );
            assert_eq!(
                v.shown_in(&r),
                self.m.members(&r).iter().any(|p| p.user == self.u),
                "shown in {r}"
            );
        }
        self.prev = v;
    }
}

fn sorted(mut e: Event) -> Event {
    e.rooms.sort();
    e
}

#[test]
fn one_machine_alone_connect_active_and_rooms() {
    let mut s = Single::new();
    s.connect(at(0), 1, Activity::Active);
    s.step(at(1), |m| {
        assert!(m.join(at(1), ConnId(1), room("r1")).unwrap())
    });
    s.step(at(2), |m| {
        assert!(m.join(at(2), ConnId(1), room("r2")).unwrap())
    });
    s.step(at(3), |m| m.leave(at(3), ConnId(1), &room("r1")).unwrap());
}

#[test]
fn one_machine_alone_idle_with_reason() {
    let mut s = Single::new();
    s.connect(at(0), 1, Activity::Idle(Hidden));
    assert_eq!(s.prev.shown, Shown::Idle(Hidden));
    s.step(at(1), |m| {
        m.join(at(1), ConnId(1), room("r1")).map(drop).unwrap()
    });
    s.step(at(2), |m| {
        m.set_activity(at(2), ConnId(1), Activity::Idle(Locked))
            .unwrap()
    });
    s.step(at(3), |m| {
        m.set_activity(at(3), ConnId(1), Activity::Active).unwrap()
    });
    s.step(at(4), |m| {
        m.set_activity(at(4), ConnId(1), Activity::Idle(NoInput))
            .unwrap()
    });
}

#[test]
fn one_machine_alone_two_connections_one_idle_one_active() {
    let mut s = Single::new();
    s.connect(at(0), 1, Activity::Idle(Blurred));
    s.connect(at(1), 2, Activity::Active);
    assert_eq!(s.prev.shown, Shown::Active);
    s.step(at(2), |m| {
        m.join(at(2), ConnId(1), room("r1")).map(drop).unwrap()
    });
    s.step(at(3), |m| {
        m.join(at(3), ConnId(2), room("r1")).map(drop).unwrap()
    });
    s.step(at(4), |m| {
        m.typing(at(4), ConnId(2), &room("r1"), true).unwrap()
    });
    s.step(at(5), |m| {
        m.typing(at(5), ConnId(1), &room("r1"), true).unwrap()
    });
    s.step(at(6), |m| {
        m.typing(at(6), ConnId(2), &room("r1"), false).unwrap()
    });
    s.step(at(7), |m| {
        m.set_activity(at(7), ConnId(2), Activity::Idle(Locked))
            .unwrap()
    });
    assert_eq!(s.prev.shown, Shown::Idle(Blurred));
    s.step(at(8), |m| m.leave(at(8), ConnId(1), &room("r1")).unwrap());
    assert!(!s.prev.typing_in(&room("r1")));
}

#[test]
fn one_machine_alone_status_and_invisible() {
    let mut s = Single::new();
    s.connect(at(0), 1, Activity::Active);
    s.step(at(1), |m| {
        m.join(at(1), ConnId(1), room("r1")).map(drop).unwrap()
    });
    s.step(at(2), |m| {
        m.typing(at(2), ConnId(1), &room("r1"), true).unwrap()
    });
    s.step(at(3), |m| {
        assert!(
            m.set_status(at(3), ConnId(1), Status::Busy, text("call"))
                .unwrap()
        )
    });
    s.step(at(4), |m| {
        assert!(
            m.set_status(at(4), ConnId(1), Status::Invisible, None)
                .unwrap()
        )
    });
    assert!(!s.prev.visible());
    s.step(at(5), |m| {
        m.join(at(5), ConnId(1), room("r2")).map(drop).unwrap()
    });
    s.step(at(6), |m| {
        m.set_activity(at(6), ConnId(1), Activity::Idle(Hidden))
            .unwrap()
    });
    s.step(at(7), |m| {
        assert!(m.set_status(at(7), ConnId(1), Status::Away, None).unwrap())
    });
    assert_eq!(s.prev.shown, Shown::Idle(Hidden));
}

#[test]
fn one_machine_alone_in_grace_and_after() {
    let mut s = Single::new();
    s.connect(at(0), 1, Activity::Active);
    s.step(at(1), |m| {
        m.join(at(1), ConnId(1), room("r1")).map(drop).unwrap()
    });
    s.step(at(2), |m| {
        m.typing(at(2), ConnId(1), &room("r1"), true).unwrap()
    });
    s.step(at(3), |m| m.dropped(at(3), ConnId(1)));
    assert!(s.prev.visible(), "in grace");
    s.step(at(5), |m| assert!(m.tick(at(5)).is_empty()));
    s.step(at(9), |m| assert!(m.tick(at(9)).is_empty()));
    s.step(at(13), |m| assert!(m.tick(at(13)).is_empty()));
    assert!(!s.prev.visible(), "grace over");
    assert_eq!(s.prev.presence(&s.u).last_seen, Some(at(3)));
    // Back, then leaving invisibly: the last-seen stays.
    s.connect(at(20), 2, Activity::Active);
    s.step(at(21), |m| {
        assert!(
            m.set_status(at(21), ConnId(2), Status::Invisible, None)
                .unwrap()
        )
    });
    s.step(at(22), |m| m.leaving(at(22), ConnId(2)));
    s.step(at(30), |m| assert!(m.tick(at(30)).is_empty()));
    assert_eq!(s.prev.presence(&s.u).last_seen, Some(at(21)));
}

#[test]
fn one_machine_alone_adopting_a_status_from_elsewhere() {
    let mut s = Single::new();
    s.connect(at(0), 1, Activity::Active);
    let u = s.u.clone();
    s.step(at(2), |m| {
        assert!(m.adopt_status(at(2), &u, Status::Away, text("out"), at(1)))
    });
    assert_eq!(s.prev.status_at, at(1));
    s.step(at(3), |m| {
        assert!(!m.adopt_status(at(3), &u, Status::Busy, None, Millis(0)))
    });
    assert_eq!(s.prev.status, Status::Away);
}
