//! Client machine tests against a scripted server, time passed in by hand.

use super::*;
use crate::presence::IdleReason;

const T0: Millis = Millis(2_000_000);

fn at(ms: u64) -> Millis {
    Millis(T0.0 + ms)
}

fn room(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

fn welcome(token: &str) -> String {
    format!(
        r#"{{"type":"welcome","v":1,"user":"ana","conn":1,"resume":"{token}","resumed":false,"heartbeat_ms":10000,"idle_after_ms":30000,"status":"available"}}"#
    )
}

fn sent(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(a) = c.poll_action() {
        match a {
            Action::Send(s) => out.push(s),
            Action::Connect => out.push("<connect>".into()),
            Action::Close(code) => out.push(format!("<close {code}>")),
            Action::FetchToken => out.push("<fetch token>".into()),
        }
    }
    out
}

fn ready() -> Client {
    let mut c = Client::new(T0, ClientConfig::default());
    c.start(T0);
    c.opened(T0);
    c.received(T0, &welcome("tok1"));
    sent(&mut c);
    while c.poll_event().is_some() {}
    c
}

#[test]
fn hello_carries_version_resume_token_and_activity() {
    let mut c = Client::new(T0, ClientConfig::default());
    c.set_resume_token(Some(ResumeToken::new("old").unwrap()));
    c.start(T0);
    assert_eq!(sent(&mut c), ["<connect>"]);
    c.opened(T0);
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"hello","v":1,"resume":"old","activity":{"state":"active"}}"#]
    );
    c.received(T0, &welcome("new"));
    assert_eq!(c.resume_token().unwrap().as_str(), "new");
    assert_eq!(c.connection(), ConnectionState::Connected);
}

#[test]
fn only_transitions_go_on_the_wire() {
    let mut c = ready();
    let mut frames = Vec::new();
    for ms in (0..29_000).step_by(500) {
        c.input(at(ms));
        c.tick(at(ms));
        let now = sent(&mut c);
        if !now.is_empty() {
            c.received(at(ms + 1), r#"{"type":"pong"}"#);
        }
        frames.extend(now);
    }
    assert!(
        frames.iter().all(|f| f == r#"{"type":"ping"}"#),
        "a busy user sends nothing but pings: {frames:?}"
    );
    c.tick(at(28_999 + 30_000));
    assert_eq!(
        sent(&mut c).last().unwrap(),
        r#"{"type":"activity","state":"idle","reason":"no_input"}"#,
        "idle-after comes from the server's welcome (30 s)"
    );
    c.input(at(60_000));
    assert_eq!(sent(&mut c), [r#"{"type":"activity","state":"active"}"#]);
}

#[test]
fn hidden_page_goes_idle_after_its_delay() {
    let mut c = ready();
    c.set_hidden(at(1_000), true);
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.next_deadline(at(1_000)), Some(at(6_000)));
    c.tick(at(6_000));
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"activity","state":"idle","reason":"hidden"}"#]
    );
    assert_eq!(c.activity(at(6_000)), Activity::Idle(IdleReason::Hidden));
}

#[test]
fn heartbeats_are_jittered_and_a_silent_socket_is_dropped() {
    let mut c = ready();
    let first = c.next_deadline(T0).unwrap();
    assert!(first >= at(9_000) && first <= at(11_000), "{first:?}");
    c.tick(first);
    assert_eq!(sent(&mut c), [r#"{"type":"ping"}"#]);
    c.received(first.after(Duration::from_millis(5)), r#"{"type":"pong"}"#);
    let second = c.next_deadline(first).unwrap();
    c.tick(second);
    assert_eq!(sent(&mut c), [r#"{"type":"ping"}"#]);
    // No pong this time: ten seconds later the socket counts as dead.
    let dead = second.after(Duration::from_secs(10));
    assert_eq!(
        c.next_deadline(second),
        Some(dead.min(c.next_deadline(second).unwrap()))
    );
    c.tick(dead);
    assert_eq!(sent(&mut c), ["<close 4000>"]);
    assert!(matches!(
        c.connection(),
        ConnectionState::Reconnecting { .. }
    ));
}

#[test]
fn a_throttled_background_tab_is_not_dropped() {
    // Chrome runs a background tab's timers once a minute: pings go out late,
    // but each is answered, so the socket is healthy.
    let mut c = ready();
    c.set_hidden(T0, true);
    for minute in 1..10 {
        let now = at(minute * 60_000);
        c.tick(now);
        let frames = sent(&mut c);
        assert!(
            frames.contains(&r#"{"type":"ping"}"#.to_owned()),
            "minute {minute}"
        );
        assert!(
            !frames.iter().any(|f| f.starts_with("<close")),
            "minute {minute}"
        );
        c.received(now.after(Duration::from_millis(3)), r#"{"type":"pong"}"#);
    }
}

#[test]
fn reconnect_backs_off_and_resends_the_desired_state_once() {
    let mut c = ready();
    c.join(room("general"));
    c.watch(vec![UserId::new("bob").unwrap()]).unwrap();
    c.mark_read(&room("general"), 7).unwrap();
    sent(&mut c);
    c.closed(at(100), Some(1006));
    // While disconnected, changes are kept as state, not queued as frames.
    c.set_status(Status::Busy, None);
    c.set_status(Status::Away, StatusText::new("lunch").unwrap());
    c.mark_read(&room("general"), 9).unwrap();
    c.mark_read(&room("general"), 8).unwrap();
    assert!(sent(&mut c).is_empty());
    let retry = c.next_deadline(at(100)).unwrap();
    assert!(retry <= at(100 + 500));
    c.tick(retry);
    assert_eq!(sent(&mut c), ["<connect>"]);
    c.opened(retry);
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"hello","v":1,"resume":"tok1","activity":{"state":"active"}}"#]
    );
    c.received(retry, &welcome("tok1"));
    assert_eq!(
        sent(&mut c),
        [
            r#"{"type":"join","room":"general"}"#,
            r#"{"type":"watch","users":["bob"]}"#,
            r#"{"type":"status","status":"away","text":"lunch"}"#,
        ]
    );
    // The marker goes once the snapshot confirms the join (a read before it
    // would be refused with not_in_room if the join were).
    c.received(
        retry,
        r#"{"type":"snapshot","room":"general","members":[]}"#,
    );
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"read","room":"general","marker":9}"#]
    );
}

#[test]
fn superseded_or_unauthorized_stops_reconnecting() {
    let mut c = ready();
    c.closed(at(1), Some(4100));
    assert_eq!(c.connection(), ConnectionState::Closed { code: None });
    assert_eq!(c.next_deadline(at(1)), None);
    c.closed(at(2), Some(1006));
    assert!(sent(&mut c).is_empty(), "a late close changes nothing");
}

#[test]
fn going_offline_probes_the_socket_at_once() {
    let mut c = ready();
    c.network_offline(at(1_000));
    assert_eq!(sent(&mut c), [r#"{"type":"ping"}"#]);
    // An answer: the socket is alive, nothing more happens.
    c.received(at(1_050), r#"{"type":"pong"}"#);
    c.tick(at(1_000 + 10_000));
    assert!(sent(&mut c).iter().all(|f| f == r#"{"type":"ping"}"#));
    c.received(at(11_050), r#"{"type":"pong"}"#);
    assert_eq!(c.connection(), ConnectionState::Connected);
    // No answer: dropped once the reply timeout has passed since the probe, where without the
    // probe it would have taken the rest of the heartbeat interval as well.
    c.network_offline(at(12_000));
    assert_eq!(sent(&mut c), [r#"{"type":"ping"}"#]);
    c.tick(at(12_000 + 9_999));
    assert!(c.next_deadline(at(12_000 + 9_999)) <= Some(at(12_000 + 10_000)));
    assert_eq!(c.connection(), ConnectionState::Connected);
    c.tick(at(12_000 + 10_000));
    assert_eq!(
        sent(&mut c).last().map(String::as_str),
        Some("<close 4000>")
    );
    assert!(matches!(
        c.connection(),
        ConnectionState::Reconnecting { .. }
    ));
}

#[test]
fn typing_is_throttled_and_stops_by_itself() {
    let mut c = ready();
    assert_eq!(c.typing(T0, &room("r")), Err(ClientError::NotInRoom));
    c.join(room("r"));
    sent(&mut c);
    for ms in (0..3_500).step_by(100) {
        c.typing(at(ms), &room("r")).unwrap();
        c.tick(at(ms));
    }
    let frames: Vec<_> = sent(&mut c)
        .into_iter()
        .filter(|f| f.contains("typing"))
        .collect();
    assert_eq!(
        frames,
        [
            r#"{"type":"typing","room":"r","active":true}"#,
            r#"{"type":"typing","room":"r","active":true}"#
        ],
        "one start, one refresh after 3 s"
    );
    c.tick(at(3_400 + 4_000));
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"typing","room":"r","active":false}"#]
    );
    c.typing(at(10_000), &room("r")).unwrap();
    c.stop_typing(&room("r"));
    c.stop_typing(&room("r"));
    assert_eq!(sent(&mut c).len(), 2, "start, then one stop");
}

#[test]
fn snapshots_and_diffs_keep_the_cache_and_tell_the_app() {
    let mut c = ready();
    c.join(room("general"));
    let snapshot = r#"{"type":"snapshot","room":"general","members":[{"user":"bob","state":"active","status":"available"}]}"#;
    c.received(at(1), snapshot);
    c.received(
        at(2),
        r#"{"type":"diffs","room":"general","diffs":[{"type":"user_idle","user":"bob","reason":"hidden"},{"type":"typing_started","user":"bob"},{"type":"read","user":"bob","marker":4}]}"#,
    );
    let view = &c.cache().room(&room("general")).unwrap();
    let bob = UserId::new("bob").unwrap();
    assert_eq!(
        view.members.get(&bob).unwrap().state,
        crate::PresenceState::Idle
    );
    assert_eq!(view.members.get(&bob).unwrap().last_active, Some(at(2)));
    assert!(view.typing.contains(&bob));
    assert_eq!(*view.receipts.get(&bob).unwrap(), 4);
    let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
    assert_eq!(events[0], ClientEvent::Joined(room("general")));
    assert_eq!(events.len(), 5, "{events:?}");
    c.received(
        at(3),
        r#"{"type":"diffs","room":"general","diffs":[{"type":"user_disconnected","user":"bob","last_seen":5}]}"#,
    );
    let view = &c.cache().room(&room("general")).unwrap();
    assert!(view.typing.is_empty(), "gone users stop typing");
    assert_eq!(view.members.get(&bob).unwrap().last_seen, Some(Millis(5)));
}

#[test]
fn a_snapshot_in_parts_adds_up_and_a_new_one_replaces_it() {
    let mut c = ready();
    c.join(room("big"));
    let part = |users: &[&str], more: bool| {
        let members: Vec<String> = users
            .iter()
            .map(|u| format!(r#"{{"user":"{u}","state":"active","status":"available"}}"#))
            .collect();
        let more = if more { r#","more":true"# } else { "" };
        format!(
            r#"{{"type":"snapshot","room":"big","members":[{}],"typing":["{}"]{more}}}"#,
            members.join(","),
            users[0]
        )
    };
    c.received(at(1), &part(&["ana", "bob"], true));
    c.received(at(1), &part(&["cat"], true));
    c.received(at(1), &part(&["dan"], false));
    let names = |c: &Client| -> Vec<String> {
        let view = c.cache().room(&room("big")).expect("room");
        let mut n: Vec<String> = view.members.keys().map(|u| u.as_str().to_owned()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&c), ["ana", "bob", "cat", "dan"]);
    let view = c.cache().room(&room("big")).expect("room");
    assert_eq!(view.typing.len(), 3, "each part's typing adds up");
    // A later snapshot (a join again, a resync) starts over.
    c.received(at(2), &part(&["eve"], false));
    assert_eq!(names(&c), ["eve"]);
}

#[test]
fn a_large_room_shows_the_servers_counts_and_summaries_move_its_members() {
    let mut c = ready();
    c.join(room("lobby"));
    c.received(
        at(0),
        r#"{"type":"snapshot","room":"lobby","members":[{"user":"ana","state":"active","status":"available"},{"user":"bob","state":"active","status":"available"}]}"#,
    );
    while c.poll_event().is_some() {}
    // The room became large: its snapshot lists some members only.
    c.received(
        at(1),
        r#"{"type":"snapshot","room":"lobby","members":[{"user":"ana","state":"active","status":"available"}],"large":true,"counts":{"online":1234,"active":1000,"idle":234}}"#,
    );
    assert!(
        !std::iter::from_fn(|| c.poll_event()).any(|e| matches!(
            e,
            ClientEvent::Presence {
                kind: PresenceKind::Left,
                ..
            }
        )),
        "who a large snapshot leaves out did not leave"
    );
    let counts = |c: &Client| c.cache().room(&room("lobby")).expect("room").counts();
    assert_eq!(
        counts(&c).online,
        1234,
        "the server's, not the one member listed"
    );
    while c.poll_event().is_some() {}
    c.received(
        at(2),
        r#"{"type":"summary","room":"lobby","counts":{"online":1234,"active":999,"idle":235},"joined":[{"user":"dave","state":"idle","reason":"hidden","status":"away"}],"left":["ana"]}"#,
    );
    let view = c.cache().room(&room("lobby")).expect("room");
    assert_eq!((view.counts().active, view.counts().idle), (999, 235));
    let dave = UserId::new("dave").unwrap();
    let ana = UserId::new("ana").unwrap();
    assert_eq!(
        view.members.get(&dave).map(|v| v.state),
        Some(crate::PresenceState::Idle)
    );
    assert!(view.members.get(&ana).is_none(), "who left is dropped");
    let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
    assert_eq!(events.len(), 3, "dave, ana, then the counts: {events:?}");
    assert!(
        matches!(&events[1], ClientEvent::Presence { view, kind: PresenceKind::Left, .. } if view.user == ana),
        "{events:?}"
    );
    assert_eq!(events[2], ClientEvent::Counts(room("lobby")));
    // Small again: a full snapshot without `large`; counts come from members.
    c.received(
        at(3),
        r#"{"type":"snapshot","room":"lobby","members":[{"user":"dave","state":"active","status":"available"}]}"#,
    );
    let view = c.cache().room(&room("lobby")).expect("room");
    assert_eq!(view.large, None);
    assert_eq!((view.counts().online, view.counts().active), (1, 1));
    c.received(
        at(4),
        r#"{"type":"summary","room":"elsewhere","counts":{"online":1,"active":1,"idle":0}}"#,
    );
    assert!(
        !std::iter::from_fn(|| c.poll_event()).any(|e| matches!(e, ClientEvent::Counts(_))),
        "a summary of a room not joined is dropped"
    );
}

#[test]
fn unknown_server_types_are_skipped_and_garbage_is_reported() {
    let mut c = ready();
    c.received(at(1), r#"{"type":"from_the_future","x":1}"#);
    assert_eq!(c.poll_event(), None);
    c.received(at(1), "{not json");
    assert!(matches!(c.poll_event(), Some(ClientEvent::Error { .. })));
}

#[test]
fn close_says_leaving_first() {
    let mut c = ready();
    c.close();
    assert_eq!(sent(&mut c), [r#"{"type":"leaving"}"#, "<close 1000>"]);
    assert_eq!(c.next_deadline(at(1)), None);
}

#[test]
fn a_status_set_in_another_tab_becomes_this_tabs_status() {
    let mut c = ready();
    c.received(
        at(1),
        r#"{"type":"self_status","status":"busy","text":"focus"}"#,
    );
    assert_eq!(
        c.status(),
        (Status::Busy, StatusText::new("focus").unwrap())
    );
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::SelfStatus { .. })
    ));
}

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn snapshot(r: &str) -> String {
    format!(r#"{{"type":"snapshot","room":"{r}","members":[]}}"#)
}

/// Frames of `kind` among `frames`.
fn of<'a>(frames: &'a [String], kind: &str) -> Vec<&'a String> {
    let tag = format!(r#"{{"type":"{kind}""#);
    frames.iter().filter(|f| f.starts_with(&tag)).collect()
}

/// Drops the socket (the server restarted) and reconnects: returns what the
/// client sent after `welcome` (resumed or not, with the server's status).
fn reconnect(c: &mut Client, now: Millis, welcome: &str) -> Vec<String> {
    c.closed(now, Some(1001));
    let retry = c.next_deadline(now).unwrap();
    c.tick(retry);
    c.opened(retry);
    sent(c);
    c.received(retry, welcome);
    sent(c)
}

fn refusal(code: &str, frame: &str, extra: &str) -> String {
    format!(r#"{{"type":"error","code":"{code}","message":"x","frame":"{frame}"{extra}}}"#)
}

fn errors(c: &mut Client) -> Vec<ClientEvent> {
    std::iter::from_fn(|| c.poll_event())
        .filter(|e| matches!(e, ClientEvent::Error { .. }))
        .collect()
}

#[test]
fn resend_of_the_largest_desired_state_fits_the_restore_allowance() {
    let mut c = ready();
    let rooms: Vec<RoomId> = (0..64).map(|i| room(&format!("r{i}"))).collect();
    for (i, r) in rooms.iter().enumerate() {
        c.try_join(r.clone()).unwrap();
        c.received(at(1), &snapshot(r.as_str()));
        c.mark_read(r, 100 + i as u64).unwrap();
    }
    assert_eq!(
        c.try_join(room("one-too-many")),
        Err(ClientError::TooManyRooms)
    );
    let users: Vec<UserId> = (0..1000).map(|i| user(&format!("u{i}"))).collect();
    c.watch(users).unwrap();
    c.set_status(Status::Busy, StatusText::new("focus").unwrap());
    sent(&mut c);

    // The server restarts and forgets everything (status back to available).
    let frames = reconnect(&mut c, at(10), &welcome("tok2"));
    assert_eq!(of(&frames, "join").len(), 64, "one join per room");
    let watches = of(&frames, "watch");
    assert_eq!(watches.len(), 5, "1000 users in frames of 200");
    // `{"type":"watch","users":[…]}`: one comma before the list, one between users.
    assert!(watches.iter().all(|w| w.matches(',').count() <= 200));
    assert_eq!(
        of(&frames, "status"),
        [r#"{"type":"status","status":"busy","text":"focus"}"#]
    );
    assert!(
        of(&frames, "read").is_empty(),
        "reads wait for the snapshots"
    );
    assert!(
        frames.len() <= 64 + 5 + 1 + 1,
        "joins, watches, status and at most an activity: {}",
        frames.len()
    );
    let mut reads = Vec::new();
    for r in &rooms {
        c.received(at(11), &snapshot(r.as_str()));
        reads.extend(sent(&mut c));
    }
    assert_eq!(of(&reads, "read").len(), 64, "one read per marked room");
    assert_eq!(reads.len(), 64);
    assert!(reads.contains(&r#"{"type":"read","room":"r63","marker":163}"#.to_owned()));
    // A second snapshot of a room (the app joined it again) sends nothing.
    c.received(at(12), &snapshot("r0"));
    assert!(sent(&mut c).is_empty());
    assert!(errors(&mut c).is_empty());
}

#[test]
fn rate_limited_frames_are_retried_with_backoff_until_the_state_converges() {
    let mut c = ready();
    for i in 0..50 {
        c.join(room(&format!("r{i}")));
    }
    c.set_status(Status::Away, None);
    assert_eq!(of(&sent(&mut c), "join").len(), 50);
    // The server's burst lets 40 through; 10 joins and the status are refused.
    for i in 0..40 {
        c.received(at(1), &snapshot(&format!("r{i}")));
    }
    for i in 40..50 {
        let extra = format!(r#","room":"r{i}""#);
        c.received(at(1), &refusal("rate_limited", "join", &extra));
    }
    c.received(at(1), &refusal("rate_limited", "status", ""));
    assert!(
        errors(&mut c).is_empty(),
        "retried refusals are not reported"
    );
    assert!(c.is_stale(), "10 rooms are not confirmed");
    assert!(sent(&mut c).is_empty(), "nothing before the retry is due");
    let first = c.next_deadline(at(1)).unwrap();
    assert_eq!(first, at(1 + 1_000), "first retry after 1 s");
    c.tick(first);
    let frames = sent(&mut c);
    assert_eq!(of(&frames, "join").len(), 10, "only the refused rooms");
    assert!(frames.contains(&r#"{"type":"join","room":"r45"}"#.to_owned()));
    assert_eq!(of(&frames, "status").len(), 1);
    // Refused again: the next round waits twice as long.
    c.received(first, &refusal("rate_limited", "join", r#","room":"r49""#));
    assert_eq!(
        c.next_deadline(first),
        Some(first.after(Duration::from_secs(2)))
    );
    for i in 40..49 {
        c.received(first, &snapshot(&format!("r{i}")));
    }
    c.tick(first.after(Duration::from_secs(2)));
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"join","room":"r49"}"#],
        "the rest"
    );
    c.received(at(4_000), &snapshot("r49"));
    assert!(!c.is_stale(), "converged");
    // A round sends at most RETRY_BATCH frames; the rest follow a second later.
    let mut c = ready();
    for i in 0..40 {
        c.join(room(&format!("s{i}")));
    }
    sent(&mut c);
    c.received(at(1), &refusal("rate_limited", "join", r#","room":"s0""#));
    c.tick(at(1_001));
    assert_eq!(sent(&mut c).len(), RETRY_BATCH);
    c.tick(at(2_001));
    assert_eq!(sent(&mut c).len(), RETRY_BATCH, "unconfirmed rooms again");
    for i in 0..40 {
        c.received(at(2_002), &snapshot(&format!("s{i}")));
    }
    c.tick(at(3_001));
    assert!(sent(&mut c).iter().all(|f| f.contains("ping")));
    assert_eq!(
        c.next_deadline(at(3_001)).map(|d| d > at(4_000)),
        Some(true)
    );
}

#[test]
fn an_unnamed_rate_limited_refusal_resends_what_has_no_confirmation() {
    let mut c = ready();
    c.join(room("a"));
    c.received(at(1), &snapshot("a"));
    c.mark_read(&room("a"), 5).unwrap();
    c.set_status(Status::Busy, None);
    sent(&mut c);
    // An older server names neither the frame nor the room.
    c.received(
        at(2),
        r#"{"type":"error","code":"rate_limited","message":"slow down"}"#,
    );
    c.tick(at(1_002));
    assert_eq!(
        sent(&mut c),
        [
            r#"{"type":"read","room":"a","marker":5}"#,
            r#"{"type":"status","status":"busy"}"#,
            r#"{"type":"activity","state":"active"}"#,
        ]
    );
}

#[test]
fn a_join_refused_for_good_leaves_the_desired_state_and_is_reported() {
    let mut c = ready();
    c.join(room("secret"));
    c.join(room("open"));
    c.watch(vec![user("boss"), user("bob")]).unwrap();
    sent(&mut c);
    c.received(at(1), &refusal("forbidden", "join", r#","room":"secret""#));
    c.received(
        at(1),
        &refusal("forbidden", "watch", r#","users":["boss"]"#),
    );
    let errs = errors(&mut c);
    assert_eq!(errs.len(), 2);
    assert_eq!(
        errs[0],
        ClientEvent::Error {
            code: ErrorCode::Forbidden,
            message: "x".into(),
            frame: Some("join".into()),
            room: Some(room("secret")),
            users: vec![],
        }
    );
    assert!(matches!(&errs[1], ClientEvent::Error { users, .. } if users == &[user("boss")]));
    assert!(!c.is_joined(&room("secret")));
    assert_eq!(c.mark_read(&room("secret"), 1), Err(ClientError::NotInRoom));
    // Not retried, and not resent after any number of reconnects.
    assert_eq!(c.next_deadline(at(1)).map(|d| d >= at(9_000)), Some(true));
    for n in 0..3 {
        let frames = reconnect(&mut c, at(10 + n), &welcome("tok"));
        assert_eq!(
            frames,
            [
                r#"{"type":"join","room":"open"}"#,
                r#"{"type":"watch","users":["bob"]}"#,
            ]
        );
    }
}

#[test]
fn a_closed_client_never_reconnects() {
    let mut c = ready();
    c.close();
    assert_eq!(sent(&mut c), [r#"{"type":"leaving"}"#, "<close 1000>"]);
    assert!(c.is_closed());
    // The server's own close after `leaving`, the network, timers, start.
    c.closed(at(1), Some(1000));
    c.network_online(at(2));
    c.start(at(3));
    c.tick(at(3_600_000));
    c.page_hide();
    assert!(
        sent(&mut c).is_empty(),
        "nothing reconnects a closed client"
    );
    assert_eq!(c.next_deadline(at(4)), None);
    assert_eq!(c.connection(), ConnectionState::Closed { code: None });
    c.close();
    assert!(
        !std::iter::from_fn(|| c.poll_event())
            .any(|e| matches!(e, ClientEvent::Connection(ConnectionState::Connecting)))
    );
}

#[test]
fn pagehide_closes_quietly_and_pageshow_resumes() {
    let mut c = ready();
    c.join(room("general"));
    sent(&mut c);
    c.page_hide();
    assert_eq!(sent(&mut c), [r#"{"type":"leaving"}"#, "<close 1000>"]);
    // The server closes with 1000 after `leaving`: no reconnect storm.
    for ms in [1, 2, 3] {
        c.closed(at(ms), Some(1000));
    }
    c.tick(at(20_000));
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.next_deadline(at(20_000)), None);
    // Restored from the back/forward cache: resumes with its token.
    c.start(at(25_000));
    c.opened(at(25_000));
    assert_eq!(
        sent(&mut c),
        [
            "<connect>",
            r#"{"type":"hello","v":1,"resume":"tok1","activity":{"state":"active"}}"#
        ]
    );
}

#[test]
fn the_snapshot_is_stale_while_reconnecting() {
    let mut c = ready();
    assert!(!c.is_stale());
    c.join(room("general"));
    assert!(c.is_stale(), "joined, snapshot not there yet");
    c.received(at(1), &snapshot("general"));
    assert!(!c.is_stale());
    c.watch(vec![user("bob")]).unwrap();
    c.received(
        at(2),
        r#"{"type":"watching","users":[{"user":"bob","state":"offline","status":"available"}]}"#,
    );
    assert!(!c.is_stale());
    c.closed(at(3), None);
    assert!(c.is_stale(), "reconnecting");
    assert!(
        c.cache().room(&room("general")).is_some(),
        "kept to show greyed out"
    );
    let retry = c.next_deadline(at(3)).unwrap();
    c.tick(retry);
    c.opened(retry);
    assert!(c.is_stale(), "connecting");
    c.received(retry, &welcome("tok1"));
    assert!(c.is_stale(), "until the snapshot and watching are back");
    c.received(retry, &snapshot("general"));
    assert!(c.is_stale(), "bob not confirmed yet");
    c.received(
        retry,
        r#"{"type":"watching","users":[{"user":"bob","state":"active","status":"available"}]}"#,
    );
    assert!(!c.is_stale());
    c.close();
    assert!(c.is_stale());
}

#[test]
fn leave_and_unwatch_while_disconnected_reach_a_resumed_connection() {
    let mut c = ready();
    c.join(room("a"));
    c.join(room("b"));
    c.watch(vec![user("bob"), user("carol")]).unwrap();
    sent(&mut c);
    c.closed(at(1), None);
    c.leave(&room("a"));
    c.unwatch(vec![user("carol")]);
    let resumed = welcome("tok1").replace(r#""resumed":false"#, r#""resumed":true"#);
    let retry = c.next_deadline(at(1)).unwrap();
    c.tick(retry);
    c.opened(retry);
    sent(&mut c);
    c.received(retry, &resumed);
    assert_eq!(
        sent(&mut c),
        [
            r#"{"type":"leave","room":"a"}"#,
            r#"{"type":"join","room":"b"}"#,
            r#"{"type":"watch","users":["bob"]}"#,
            r#"{"type":"unwatch","users":["carol"]}"#,
        ]
    );
    // A fresh connection holds nothing: no leave or unwatch needed.
    c.leave(&room("b"));
    let frames = reconnect(&mut c, at(20_000), &welcome("tok3"));
    assert_eq!(frames, [r#"{"type":"watch","users":["bob"]}"#]);
}

#[test]
fn the_status_survives_a_server_restart_and_a_resume_takes_the_servers() {
    let mut c = ready();
    c.set_status(Status::Busy, StatusText::new("focus").unwrap());
    sent(&mut c);
    // Restarted without a store: the server says available; ours goes back.
    let frames = reconnect(&mut c, at(1), &welcome("tok2"));
    assert_eq!(
        frames,
        [r#"{"type":"status","status":"busy","text":"focus"}"#]
    );
    // Resumed: the server kept the connection, and another tab set away.
    let resumed = welcome("tok2")
        .replace(r#""resumed":false"#, r#""resumed":true"#)
        .replace(r#""status":"available""#, r#""status":"away""#);
    let frames = reconnect(&mut c, at(40_000), &resumed);
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(c.status(), (Status::Away, None));
}

#[test]
fn desired_state_after_many_reconnects_is_what_the_app_asked_for() {
    let mut c = ready();
    let mut now = at(0);
    for n in 0..20u64 {
        c.join(room(&format!("r{}", n % 7)));
        if n % 3 == 0 {
            c.leave(&room(&format!("r{}", (n + 2) % 7)));
        }
        if n == 5 {
            c.join(room("denied"));
        }
        let frames = reconnect(&mut c, now, &welcome("t"));
        let joined: Vec<&String> = of(&frames, "join");
        let want: Vec<String> = c
            .rooms
            .iter()
            .map(|r| format!(r#"{{"type":"join","room":"{}"}}"#, r.as_str()))
            .collect();
        assert_eq!(joined, want.iter().collect::<Vec<_>>(), "round {n}");
        if c.is_joined(&room("denied")) {
            c.received(now, &refusal("forbidden", "join", r#","room":"denied""#));
        }
        for r in want.iter().filter(|_| n % 2 == 0) {
            let name = r.split('"').nth(7).unwrap();
            c.received(now, &snapshot(name));
        }
        now = now.after(Duration::from_secs(40));
    }
    assert!(!c.is_joined(&room("denied")));
}

const VIEW_NONE: &str = r#"{"type":"view"}"#;

fn view_of(r: &str) -> String {
    format!(r#"{{"type":"view","room":"{r}"}}"#)
}

fn resumed(token: &str) -> String {
    welcome(token).replace(r#""resumed":false"#, r#""resumed":true"#)
}

#[test]
fn every_hello_says_the_configured_device() {
    let config = ClientConfig {
        device: Some(DeviceKind::Mobile),
        ..ClientConfig::default()
    };
    let mut c = Client::new(T0, config);
    c.start(T0);
    c.opened(T0);
    let hello = r#"{"type":"hello","v":1,"activity":{"state":"active"},"device":"mobile"}"#;
    assert_eq!(sent(&mut c), ["<connect>", hello]);
    c.received(T0, &welcome("tok1"));
    c.closed(at(1), Some(1001));
    let retry = c.next_deadline(at(1)).unwrap();
    c.tick(retry);
    c.opened(retry);
    assert_eq!(
        sent(&mut c),
        [
            "<connect>",
            r#"{"type":"hello","v":1,"resume":"tok1","activity":{"state":"active"},"device":"mobile"}"#,
        ]
    );
}

#[test]
fn the_view_goes_after_its_join_and_only_when_it_changes() {
    let mut c = ready();
    assert_eq!(c.view(Some(room("a"))), Err(ClientError::NotInRoom));
    assert!(sent(&mut c).is_empty());
    c.join(room("a"));
    c.view(Some(room("a"))).unwrap();
    c.view(Some(room("a"))).unwrap();
    c.join(room("b"));
    c.view(Some(room("b"))).unwrap();
    c.view(None).unwrap();
    c.view(None).unwrap();
    c.view(Some(room("a"))).unwrap();
    assert_eq!(
        sent(&mut c),
        [
            r#"{"type":"join","room":"a"}"#.to_owned(),
            view_of("a"),
            r#"{"type":"join","room":"b"}"#.to_owned(),
            view_of("b"),
            VIEW_NONE.to_owned(),
            view_of("a"),
        ],
        "one frame per change, each after its room's join"
    );
    // Leaving the viewed room views nothing: the server clears it with the leave.
    c.leave(&room("a"));
    assert_eq!(sent(&mut c), [r#"{"type":"leave","room":"a"}"#]);
    c.view(None).unwrap();
    assert!(sent(&mut c).is_empty(), "already none");
}

#[test]
fn the_view_is_restored_after_every_reconnect_right_after_the_joins() {
    let mut c = ready();
    c.join(room("a"));
    c.join(room("b"));
    c.view(Some(room("a"))).unwrap();
    sent(&mut c);
    let joins_then = |v: &str| {
        vec![
            r#"{"type":"join","room":"a"}"#.to_owned(),
            r#"{"type":"join","room":"b"}"#.to_owned(),
            v.to_owned(),
        ]
    };
    assert_eq!(
        reconnect(&mut c, at(1), &welcome("t2")),
        joins_then(&view_of("a"))
    );
    let frames = reconnect(&mut c, at(20_000), &resumed("t2"));
    assert_eq!(frames, joins_then(&view_of("a")), "a resumed socket too");
    // Changed while disconnected: nothing goes until the joins went again.
    c.closed(at(40_000), Some(1001));
    c.view(Some(room("b"))).unwrap();
    assert!(sent(&mut c).is_empty());
    let retry = c.next_deadline(at(40_000)).unwrap();
    c.tick(retry);
    c.opened(retry);
    sent(&mut c);
    c.received(retry, &welcome("t3"));
    assert_eq!(sent(&mut c), joins_then(&view_of("b")));
    // Viewing none: a fresh socket views none already; a resumed one is told
    // if the app cleared the view while it was away.
    c.view(None).unwrap();
    assert_eq!(sent(&mut c), [VIEW_NONE]);
    let frames = reconnect(&mut c, at(60_000), &resumed("t3"));
    assert_eq!(of(&frames, "view").len(), 0, "{frames:?}");
    c.view(Some(room("a"))).unwrap();
    sent(&mut c);
    c.closed(at(80_000), Some(1001));
    c.view(None).unwrap();
    let retry = c.next_deadline(at(80_000)).unwrap();
    c.tick(retry);
    c.opened(retry);
    sent(&mut c);
    c.received(retry, &resumed("t3"));
    assert_eq!(of(&sent(&mut c), "view"), [VIEW_NONE]);
    c.view(Some(room("a"))).unwrap();
    sent(&mut c);
    c.closed(at(100_000), Some(1001));
    c.view(None).unwrap();
    let frames = reconnect(&mut c, at(100_000), &welcome("t4"));
    assert_eq!(of(&frames, "view").len(), 0, "a fresh socket: {frames:?}");
    // Left while away: the resumed socket's leave clears it there.
    c.view(Some(room("b"))).unwrap();
    sent(&mut c);
    c.closed(at(120_000), Some(1001));
    c.leave(&room("b"));
    let frames = reconnect(&mut c, at(120_000), &resumed("t4"));
    assert_eq!(
        frames,
        [
            r#"{"type":"leave","room":"b"}"#,
            r#"{"type":"join","room":"a"}"#
        ]
    );
}

#[test]
fn a_view_refused_with_its_join_goes_again_after_the_join() {
    let mut c = ready();
    c.join(room("a"));
    c.view(Some(room("a"))).unwrap();
    sent(&mut c);
    c.received(at(1), &refusal("rate_limited", "join", r#","room":"a""#));
    c.received(at(1), &refusal("not_in_room", "view", r#","room":"a""#));
    assert!(errors(&mut c).is_empty(), "nothing the app can act on");
    c.tick(at(1_001));
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"join","room":"a"}"#.to_owned(), view_of("a")]
    );
    // The view itself rate-limited: the retry round sends the latest one.
    c.received(at(1_002), &snapshot("a"));
    c.join(room("b"));
    c.view(Some(room("b"))).unwrap();
    sent(&mut c);
    c.received(
        at(1_003),
        &refusal("rate_limited", "view", r#","room":"b""#),
    );
    let retry = c.next_deadline(at(1_003)).unwrap();
    c.tick(retry);
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"join","room":"b"}"#.to_owned(), view_of("b")],
        "b is not confirmed yet: its join goes again first"
    );
    c.received(retry, &snapshot("b"));
    // The refusal of an older view is no news once another room is in view.
    c.view(Some(room("a"))).unwrap();
    sent(&mut c);
    c.received(retry, &refusal("not_in_room", "view", r#","room":"b""#));
    c.tick(retry.after(Duration::from_secs(60)));
    assert!(of(&sent(&mut c), "view").is_empty());
}

#[test]
fn a_view_whose_join_is_refused_for_good_falls_back_to_none() {
    let mut c = ready();
    c.join(room("open"));
    c.view(Some(room("open"))).unwrap();
    c.join(room("secret"));
    c.view(Some(room("secret"))).unwrap();
    sent(&mut c);
    // The server keeps viewing `open`: the view of `secret` was refused.
    c.received(at(1), &refusal("forbidden", "join", r#","room":"secret""#));
    assert!(sent(&mut c).is_empty());
    c.received(
        at(1),
        &refusal("not_in_room", "view", r#","room":"secret""#),
    );
    assert_eq!(sent(&mut c), [VIEW_NONE]);
    assert_eq!(errors(&mut c).len(), 1, "the join's refusal only");
    // A server that does not know `view` is not asked again and again.
    c.received(at(2), &refusal("unknown_type", "view", ""));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn client_error_messages_name_the_real_limits() {
    use crate::limits::{MAX_ROOMS_PER_CONNECTION, MAX_WATCHED_PER_CONNECTION};
    assert_eq!(
        ClientError::TooManyWatched.to_string(),
        format!("at most {MAX_WATCHED_PER_CONNECTION} watched users")
    );
    assert_eq!(
        ClientError::TooManyRooms.to_string(),
        format!("at most {MAX_ROOMS_PER_CONNECTION} rooms")
    );
    assert_eq!(ClientError::NotInRoom.code(), "not_in_room");
}

/// A scripted server with the real one's limits on frames: the restore allowance (64 `join`,
/// 64 `read`, 5 `watch`, 1 `status` per socket), then a bucket of 40 refilled at 20 a second;
/// a refused frame gets `rate_limited` naming its frame and room, as presence-server sends it.
/// `view` frames have their own bucket on top (10, refilled at 1 a second).
struct Model {
    view_tokens: f64,
    view: Option<String>,
    allowance: [usize; 4],
    tokens: f64,
    last: Millis,
    rooms: std::collections::BTreeMap<String, u64>,
    watched: std::collections::BTreeSet<String>,
    status: String,
    refused: usize,
}

impl Model {
    fn new(now: Millis) -> Self {
        Model {
            view_tokens: 10.0,
            view: None,
            allowance: [64, 64, 5, 1],
            tokens: 40.0,
            last: now,
            rooms: Default::default(),
            watched: Default::default(),
            status: "available".into(),
            refused: 0,
        }
    }

    /// Handles what the client sent; returns the replies.
    fn handle(&mut self, now: Millis, frames: Vec<String>) -> Vec<String> {
        let mut out = Vec::new();
        for f in frames.into_iter().filter(|f| f.starts_with('{')) {
            let v: serde_json::Value = serde_json::from_str(&f).unwrap();
            let kind = v["type"].as_str().unwrap().to_owned();
            let room = v["room"].as_str().map(str::to_owned);
            let slot = ["join", "read", "watch", "status"]
                .iter()
                .position(|k| *k == kind);
            let restoring = slot.is_some_and(|i| {
                let paid = self.allowance[i] > 0;
                self.allowance[i] = self.allowance[i].saturating_sub(1);
                paid
            });
            if !restoring && kind != "ping" {
                let secs = now.since(self.last).as_secs_f64();
                self.tokens = (self.tokens + secs * 20.0).min(40.0);
                self.view_tokens = (self.view_tokens + secs).min(10.0);
                self.last = now;
                let view_limited = kind == "view" && self.view_tokens < 1.0;
                if self.tokens < 1.0 || view_limited {
                    self.refused += 1;
                    let room = room
                        .map(|r| format!(r#","room":"{r}""#))
                        .unwrap_or_default();
                    out.push(refusal("rate_limited", &kind, &room));
                    continue;
                }
                self.tokens -= 1.0;
                if kind == "view" {
                    self.view_tokens -= 1.0;
                }
            }
            match kind.as_str() {
                "join" => {
                    let r = room.unwrap();
                    self.rooms.entry(r.clone()).or_insert(0);
                    out.push(snapshot(&r));
                }
                "leave" => {
                    let r = room.unwrap();
                    self.rooms.remove(&r);
                    if self.view.as_ref() == Some(&r) {
                        self.view = None;
                    }
                }
                "view" => match room {
                    Some(r) if !self.rooms.contains_key(&r) => {
                        out.push(refusal("not_in_room", "view", &format!(r#","room":"{r}""#)));
                    }
                    r => self.view = r,
                },
                "read" => {
                    let m = v["marker"].as_u64().unwrap();
                    if let Some(at) = self.rooms.get_mut(&room.unwrap()) {
                        *at = (*at).max(m);
                    }
                }
                "watch" | "unwatch" => {
                    let users = v["users"].as_array().unwrap().iter();
                    let users: Vec<String> = users.map(|u| u.as_str().unwrap().into()).collect();
                    if kind == "watch" {
                        let views: Vec<String> = users
                            .iter()
                            .map(|u| {
                                format!(
                                    r#"{{"user":"{u}","state":"offline","status":"available"}}"#
                                )
                            })
                            .collect();
                        self.watched.extend(users);
                        out.push(format!(
                            r#"{{"type":"watching","users":[{}]}}"#,
                            views.join(",")
                        ));
                    } else {
                        for u in users {
                            self.watched.remove(&u);
                        }
                    }
                }
                "status" => self.status = v["status"].as_str().unwrap().into(),
                "ping" => out.push(r#"{"type":"pong"}"#.into()),
                _ => {}
            }
        }
        out
    }
}

/// Runs client and model for `ms`, 100 ms a step, the replies arriving a millisecond later.
fn run(c: &mut Client, server: &mut Model, from: Millis, ms: u64) -> Millis {
    let mut now = from;
    while now < from.after(Duration::from_millis(ms)) {
        c.tick(now);
        loop {
            let frames = sent(c);
            if frames.is_empty() {
                break;
            }
            for reply in server.handle(now, frames) {
                c.received(now.after(Duration::from_millis(1)), &reply);
            }
        }
        now = now.after(Duration::from_millis(100));
    }
    now
}

#[test]
fn a_rate_limited_burst_converges_and_a_restart_restores_everything_within_the_allowance() {
    // Views included: 30 in a row against their bucket of 10, a join of the room before each.
    let mut c = ready();
    let mut server = Model::new(T0);
    let mut now = run(&mut c, &mut server, T0, 100);
    // The allowance goes on the first 64 rooms; then the app moves to 30 other rooms at once:
    // 60 frames against a bucket of 40.
    for i in 0..64 {
        c.join(room(&format!("a{i}")));
    }
    now = run(&mut c, &mut server, now, 200);
    for i in 0..30 {
        c.leave(&room(&format!("a{i}")));
        c.join(room(&format!("b{i}")));
        c.view(Some(room(&format!("b{i}")))).unwrap();
        c.mark_read(&room(&format!("b{i}")), 500 + i).unwrap();
    }
    let users: Vec<UserId> = (0..1000).map(|i| user(&format!("u{i}"))).collect();
    c.watch(users).unwrap();
    c.set_status(Status::Busy, StatusText::new("focus").unwrap());
    now = run(&mut c, &mut server, now, 30_000);
    assert!(server.refused > 0, "the burst was rate-limited");
    assert!(errors(&mut c).is_empty(), "and nothing reported");
    assert!(!c.is_stale(), "converged");
    let want: Vec<String> = c.rooms.iter().map(|r| r.as_str().to_owned()).collect();
    assert_eq!(server.rooms.keys().cloned().collect::<Vec<_>>(), want);
    assert_eq!(server.rooms.get("b29"), Some(&529));
    assert_eq!(server.watched.len(), 1000);
    assert_eq!(server.status, "busy");
    assert_eq!(server.view.as_deref(), Some("b29"), "the last room viewed");

    // The server restarts empty: the resend fits the new socket's allowance, nothing refused.
    let mut fresh = Model::new(now);
    c.closed(now, Some(1001));
    let retry = c.next_deadline(now).unwrap();
    c.tick(retry);
    c.opened(retry);
    sent(&mut c);
    c.received(retry, &welcome("tok2"));
    run(&mut c, &mut fresh, retry, 1_000);
    assert_eq!(fresh.refused, 0, "the resend fits the allowance");
    assert_eq!(fresh.rooms, server.rooms, "rooms and markers back");
    assert_eq!(fresh.watched, server.watched);
    assert_eq!(fresh.status, "busy");
    assert_eq!(fresh.view.as_deref(), Some("b29"));
}

fn with_source() -> Client {
    let config = ClientConfig {
        token_source: true,
        ..ClientConfig::default()
    };
    Client::new(T0, config)
}

fn welcome_exp(exp: Millis) -> String {
    format!(
        r#"{{"type":"welcome","v":1,"user":"ana","conn":1,"resume":"r1","resumed":false,"heartbeat_ms":60000,"idle_after_ms":300000,"status":"available","exp":{}}}"#,
        exp.0
    )
}

fn events(c: &mut Client) -> Vec<ClientEvent> {
    core::iter::from_fn(|| c.poll_event()).collect()
}

#[test]
fn a_token_source_is_asked_before_connecting_and_before_exp() {
    let mut c = with_source();
    c.start(T0);
    assert_eq!(sent(&mut c), ["<fetch token>"]);
    assert_eq!(c.connection(), ConnectionState::Connecting);
    c.set_token(at(5), "t1".into());
    assert_eq!(sent(&mut c), ["<connect>"]);
    assert_eq!(c.token(), Some("t1"));
    c.opened(at(10));
    sent(&mut c);
    // 40 s left: refreshed with a quarter of that to spare, at 30 s.
    c.received(at(10), &welcome_exp(at(40_010)));
    assert_eq!(c.next_deadline(at(10)), Some(at(30_010)));
    c.tick(at(30_009));
    assert!(!sent(&mut c).contains(&"<fetch token>".into()));
    c.tick(at(30_010));
    assert_eq!(sent(&mut c), ["<fetch token>"]);
    c.set_token(at(30_020), "t2".into());
    assert_eq!(sent(&mut c), [r#"{"type":"auth","token":"t2"}"#]);
    // An hour-long token: a minute early.
    c.received(at(30_030), r#"{"type":"auth_ok","exp":5630030}"#);
    c.tick(Millis(5_630_030 - 60_001));
    assert!(!sent(&mut c).contains(&"<fetch token>".into()));
    c.tick(Millis(5_630_030 - 60_000));
    assert!(sent(&mut c).contains(&"<fetch token>".into()));
    assert_eq!(c.connection(), ConnectionState::Connected);
    assert!(
        events(&mut c)
            .iter()
            .all(|e| !matches!(e, ClientEvent::Error { .. }))
    );
}

#[test]
fn a_refused_token_is_replaced_through_the_source_without_an_error() {
    let mut c = with_source();
    c.set_token(T0, "old".into());
    c.start(T0);
    assert_eq!(sent(&mut c), ["<connect>"], "a token in hand is used first");
    c.opened(T0);
    c.received(T0, &welcome_exp(at(1_000)));
    sent(&mut c);
    events(&mut c);
    c.received(
        at(1_000),
        r#"{"type":"error","code":"unauthorized","message":"the token expired"}"#,
    );
    c.closed(at(1_000), Some(4101));
    assert!(matches!(
        c.connection(),
        ConnectionState::Reconnecting { .. }
    ));
    let retry = c.next_deadline(at(1_000)).unwrap();
    c.tick(retry);
    assert_eq!(
        sent(&mut c),
        ["<fetch token>"],
        "the refused token is dropped"
    );
    c.set_token(retry, "new".into());
    assert_eq!(sent(&mut c), ["<connect>"]);
    assert_eq!(c.token(), Some("new"));
    assert!(
        events(&mut c)
            .iter()
            .all(|e| !matches!(e, ClientEvent::Error { .. })),
        "recovered: nothing for onError"
    );
}

#[test]
fn refusals_in_a_row_stop_the_client_as_unauthorized() {
    let mut c = with_source();
    c.start(T0);
    let mut now = T0;
    for round in 0..=MAX_REFUSALS {
        assert_eq!(sent(&mut c), ["<fetch token>"], "round {round}");
        c.set_token(now, "bad".into());
        assert_eq!(sent(&mut c), ["<connect>"]);
        c.opened(now);
        sent(&mut c);
        c.received(
            now,
            r#"{"type":"error","code":"unauthorized","message":"bad signature"}"#,
        );
        c.closed(now, Some(4101));
        if round < MAX_REFUSALS {
            now = c.next_deadline(now).unwrap();
            c.tick(now);
        }
    }
    assert_eq!(c.connection(), ConnectionState::Unauthorized);
    let ev = events(&mut c);
    assert!(ev.contains(&ClientEvent::Connection(ConnectionState::Unauthorized)));
    assert!(ev.iter().any(|e| matches!(e,
        ClientEvent::Error { code: ErrorCode::Unauthorized, message, .. } if message == "bad signature")));
    assert_eq!(c.next_deadline(now), None, "nothing more on its own");
    // The app acts: a fresh token starts it again.
    c.set_token(now, "good".into());
    assert_eq!(sent(&mut c), ["<connect>"]);
    assert_eq!(c.connection(), ConnectionState::Connecting);
}

#[test]
fn without_a_source_a_4101_stops_at_once() {
    let mut c = ready();
    c.closed(at(5), Some(4101));
    assert_eq!(c.connection(), ConnectionState::Unauthorized);
    assert!(events(&mut c).iter().any(|e| matches!(
        e,
        ClientEvent::Error {
            code: ErrorCode::Unauthorized,
            ..
        }
    )));
    assert_eq!(c.token(), None);
    c.tick(at(60_000));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn a_failing_or_silent_source_stops_before_connecting_and_retries_while_live() {
    let mut c = with_source();
    c.start(T0);
    sent(&mut c);
    c.token_failed(at(3));
    assert_eq!(c.connection(), ConnectionState::Unauthorized);

    let mut c = with_source();
    c.start(T0);
    sent(&mut c);
    assert_eq!(
        c.next_deadline(T0),
        Some(at(10_000)),
        "asked: reply timeout"
    );
    c.tick(at(10_000));
    assert_eq!(c.connection(), ConnectionState::Unauthorized);

    let mut c = with_source();
    c.start(T0);
    c.set_token(T0, "t1".into());
    c.opened(T0);
    c.received(T0, &welcome_exp(at(40_000)));
    c.tick(at(30_000));
    assert!(sent(&mut c).contains(&"<fetch token>".into()));
    c.token_failed(at(30_001));
    assert_eq!(c.connection(), ConnectionState::Connected);
    assert_eq!(c.next_deadline(at(30_001)), Some(at(35_001)));
    c.tick(at(35_001));
    assert_eq!(sent(&mut c), ["<fetch token>"]);
    // Silent this time: after the reply timeout it counts as failed, and
    // the next try is planned.
    c.tick(at(45_001));
    assert_eq!(c.next_deadline(at(45_001)), Some(at(50_001)));
    // A rate-limited refresh is tried again later too.
    c.tick(at(50_001));
    c.set_token(at(50_002), "t2".into());
    sent(&mut c);
    c.received(
        at(50_003),
        r#"{"type":"error","code":"rate_limited","message":"slow down","frame":"auth"}"#,
    );
    c.tick(at(55_002));
    assert!(!sent(&mut c).contains(&"<fetch token>".into()));
    c.tick(at(55_003));
    assert!(sent(&mut c).contains(&"<fetch token>".into()));
}

#[test]
fn a_reconnect_after_exp_asks_for_a_token_first() {
    let mut c = with_source();
    c.set_token(T0, "t1".into());
    c.start(T0);
    c.opened(T0);
    c.received(T0, &welcome_exp(at(20_000)));
    sent(&mut c);
    c.closed(at(25_000), Some(1006));
    let retry = c.next_deadline(at(25_000)).unwrap();
    c.tick(retry);
    assert_eq!(sent(&mut c), ["<fetch token>"]);
}

/// `(room, user, kind)` of the presence events since the last call.
fn kinds_seen(c: &mut Client) -> Vec<(Option<String>, String, &'static str)> {
    core::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            ClientEvent::Presence { room, view, kind } => Some((
                room.map(|r| r.as_str().to_owned()),
                view.user.as_str().to_owned(),
                kind.name(),
            )),
            _ => None,
        })
        .collect()
}

fn member(user: &str, state: &str) -> String {
    let reason = if state == "idle" {
        r#","reason":"hidden""#
    } else {
        ""
    };
    format!(r#"{{"user":"{user}","state":"{state}"{reason},"status":"available"}}"#)
}

fn snapshot_of(room: &str, members: &[String], more: bool) -> String {
    let more = if more { r#","more":true"# } else { "" };
    format!(
        r#"{{"type":"snapshot","room":"{room}","members":[{}]{more}}}"#,
        members.join(",")
    )
}

#[test]
fn each_presence_event_says_what_changed_once_and_never_for_a_non_change() {
    let mut c = ready();
    c.join(room("r"));
    let first = snapshot_of(
        "r",
        &[
            member("ana", "active"),
            member("bob", "idle"),
            member("cy", "offline"),
        ],
        false,
    );
    c.received(at(1), &first);
    let r = || Some("r".to_owned());
    assert_eq!(
        kinds_seen(&mut c),
        [
            (r(), "ana".into(), "joined"),
            (r(), "bob".into(), "joined"),
            (r(), "cy".into(), "offline")
        ]
    );
    // The same snapshot again (a join again, a resync): nothing happened.
    c.received(at(2), &first);
    assert_eq!(kinds_seen(&mut c), []);
    let diffs = r#"{"type":"diffs","room":"r","diffs":[
        {"type":"user_active","user":"bob"},
        {"type":"status","user":"bob","status":"busy"},
        {"type":"user_idle","user":"ana","reason":"blurred"},
        {"type":"user_idle","user":"ana","reason":"hidden"},
        {"type":"user_left","user":"bob"},
        {"type":"user_disconnected","user":"ana","last_seen":9},
        {"type":"user_connected","presence":{"user":"cy","state":"active","status":"available"}}]}"#;
    c.received(at(3), diffs);
    assert_eq!(
        kinds_seen(&mut c),
        [
            (r(), "bob".into(), "active"),
            (r(), "bob".into(), "status"),
            (r(), "ana".into(), "idle"),
            (r(), "ana".into(), "idle"),
            (r(), "bob".into(), "left"),
            (r(), "ana".into(), "offline"),
            (r(), "cy".into(), "joined")
        ]
    );
    let members = &c.cache().room(&room("r")).unwrap().members;
    assert!(
        members.get(&UserId::new("bob").unwrap()).is_none(),
        "left: not a member"
    );
    assert_eq!(
        members.get(&UserId::new("ana").unwrap()).unwrap().state,
        crate::PresenceState::Offline,
        "offline: kept for last seen"
    );
}

#[test]
fn a_snapshot_in_parts_reports_who_left_after_its_last_part() {
    let mut c = ready();
    c.join(room("big"));
    c.received(
        at(1),
        &snapshot_of(
            "big",
            &[member("ana", "active"), member("bob", "active")],
            false,
        ),
    );
    kinds_seen(&mut c);
    c.received(at(2), &snapshot_of("big", &[member("ana", "active")], true));
    assert_eq!(kinds_seen(&mut c), [], "bob may be in a later part");
    c.received(at(2), &snapshot_of("big", &[member("cy", "idle")], false));
    let big = || Some("big".to_owned());
    assert_eq!(
        kinds_seen(&mut c),
        [
            (big(), "cy".into(), "joined"),
            (big(), "bob".into(), "left")
        ]
    );
}

#[test]
fn watched_users_come_online_and_go_offline() {
    let mut c = ready();
    c.watch(vec![UserId::new("bob").unwrap()]).unwrap();
    let watching = |state: &str| {
        format!(
            r#"{{"type":"watching","users":[{}]}}"#,
            member("bob", state)
        )
    };
    c.received(at(1), &watching("offline"));
    assert_eq!(kinds_seen(&mut c), [(None, "bob".into(), "offline")]);
    c.received(at(2), &watching("offline"));
    assert_eq!(kinds_seen(&mut c), [], "watching again, unchanged");
    c.received(
        at(3),
        r#"{"type":"diffs","diffs":[{"type":"user_connected","presence":{"user":"bob","state":"idle","reason":"hidden","status":"away"}}]}"#,
    );
    assert_eq!(kinds_seen(&mut c), [(None, "bob".into(), "online")]);
}

#[test]
fn data_is_sent_when_live_resent_after_a_reconnect_and_its_changes_are_told() {
    let obj = |s: &str| crate::JsonObject::parse(s, 1024).unwrap();
    let mut c = Client::new(T0, ClientConfig::default());
    c.set_data(Some(obj(r#"{"viewing":"plan"}"#)));
    c.start(T0);
    c.opened(T0);
    c.received(T0, &welcome("tok1"));
    assert!(
        sent(&mut c).contains(&r#"{"type":"data","data":{"viewing":"plan"}}"#.to_owned()),
        "set before connecting, sent after welcome"
    );
    c.closed(at(1), Some(1001));
    let retry = c.next_deadline(at(1)).unwrap();
    c.tick(retry);
    c.opened(retry);
    c.received(retry, &welcome("tok2"));
    assert!(sent(&mut c).contains(&r#"{"type":"data","data":{"viewing":"plan"}}"#.to_owned()));
    c.set_data(None);
    assert_eq!(sent(&mut c), [r#"{"type":"data"}"#]);
    // A refusal for good is told once and the object is not sent again.
    c.set_data(Some(obj(r#"{"big":1}"#)));
    sent(&mut c);
    c.received(
        retry,
        r#"{"type":"error","code":"data_too_large","message":"too big","frame":"data"}"#,
    );
    c.closed(at(20_000), Some(1001));
    let retry = c.next_deadline(at(20_000)).unwrap();
    c.tick(retry);
    c.opened(retry);
    c.received(retry, &welcome("tok3"));
    assert!(sent(&mut c).iter().all(|f| !f.contains("\"data\"")));

    c.join(room("r"));
    c.received(at(1), &snapshot_of("r", &[member("bob", "active")], false));
    kinds_seen(&mut c);
    c.received(
        at(2),
        r#"{"type":"diffs","room":"r","diffs":[{"type":"data","user":"bob","info":{"name":"Bob"},"data":{"x":0.5}}]}"#,
    );
    assert_eq!(
        kinds_seen(&mut c),
        [(Some("r".into()), "bob".into(), "data")]
    );
    let bob = c
        .cache()
        .room(&room("r"))
        .unwrap()
        .members
        .get(&UserId::new("bob").unwrap())
        .cloned()
        .unwrap();
    assert_eq!(bob.data.unwrap().as_str(), r#"{"x":0.5}"#);
    assert_eq!(bob.info.unwrap().as_str(), r#"{"name":"Bob"}"#);
}

/// PROTOCOL.md, "Presence data": `info` and `data` are shown only while the
/// user is online. What the server no longer sends, the cache must not keep.
#[test]
fn an_offline_member_carries_no_info_or_data_until_online_again() {
    let mut c = ready();
    c.join(room("r"));
    c.watch(vec![user("bob")]).unwrap();
    let online = r#"{"user":"bob","state":"idle","reason":"hidden","status":"busy","text":"lunch","last_active":5,"info":{"name":"Bob"},"data":{"viewing":"plan"}}"#;
    c.received(at(1), &snapshot_of("r", &[online.to_owned()], false));
    c.received(
        at(1),
        &format!(r#"{{"type":"watching","users":[{online}]}}"#),
    );
    kinds_seen(&mut c);
    let bob = |c: &Client| {
        let in_room = c
            .cache()
            .room(&room("r"))
            .unwrap()
            .members
            .get(&user("bob"));
        (
            in_room.cloned().unwrap(),
            c.cache().watched().get(&user("bob")).cloned().unwrap(),
        )
    };
    let (in_room, watched) = bob(&c);
    assert!(in_room.info.is_some() && in_room.data.is_some());
    assert!(watched.info.is_some() && watched.data.is_some());

    let gone = r#"[{"type":"user_disconnected","user":"bob","last_seen":7}]"#;
    c.received(
        at(2),
        &format!(r#"{{"type":"diffs","room":"r","diffs":{gone}}}"#),
    );
    c.received(at(2), &format!(r#"{{"type":"diffs","diffs":{gone}}}"#));
    // The events' views and the cache's, in the room and in the watch list.
    let mut views: Vec<_> = core::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            ClientEvent::Presence { view, kind, .. } => {
                assert_eq!(kind, PresenceKind::Offline);
                Some(view)
            }
            _ => None,
        })
        .collect();
    assert_eq!(views.len(), 2, "{views:?}");
    views.extend(<[_; 2]>::from(bob(&c)));
    for view in views {
        assert_eq!(view.state, crate::PresenceState::Offline);
        assert_eq!((&view.info, &view.data), (&None, &None), "{view:?}");
        assert_eq!(
            (view.reason, view.last_active, view.last_seen),
            (None, None, Some(Millis(7)))
        );
        // What an offline user still shows: their status and its text.
        assert_eq!(view.status, crate::Status::Busy);
        assert_eq!(view.text.as_ref().map(|t| t.as_str()), Some("lunch"));
    }

    let back = r#"[{"type":"user_connected","presence":{"user":"bob","state":"active","status":"available","last_active":9,"info":{"name":"Bob"},"data":{"viewing":"roadmap"}}}]"#;
    c.received(
        at(3),
        &format!(r#"{{"type":"diffs","room":"r","diffs":{back}}}"#),
    );
    c.received(at(3), &format!(r#"{{"type":"diffs","diffs":{back}}}"#));
    assert_eq!(
        kinds_seen(&mut c),
        [
            (Some("r".into()), "bob".into(), "joined"),
            (None, "bob".into(), "online")
        ]
    );
    for view in <[_; 2]>::from(bob(&c)) {
        assert_eq!(view.info.unwrap().as_str(), r#"{"name":"Bob"}"#);
        assert_eq!(view.data.unwrap().as_str(), r#"{"viewing":"roadmap"}"#);
        assert_eq!(view.last_seen, None);
    }
}

#[test]
fn privacy_is_sent_when_live_or_after_welcome_merged_and_kept_as_the_server_says() {
    let mut c = Client::new(T0, ClientConfig::default());
    // Two changes before a socket: merged into one frame, the later value winning.
    c.set_privacy(Some(LastSeen::Contacts), None);
    c.set_privacy(Some(LastSeen::Nobody), Some(Receipts::Off));
    c.set_privacy(None, Some(Receipts::On));
    c.start(T0);
    c.opened(T0);
    c.received(T0, &welcome("tok1"));
    let frames = sent(&mut c);
    let privacy: Vec<_> = frames.iter().filter(|f| f.contains("privacy")).collect();
    assert_eq!(
        privacy,
        [r#"{"type":"privacy","last_seen":"nobody","receipts":"on"}"#],
        "{frames:?}"
    );
    assert_eq!(c.privacy(), Privacy::default(), "until the server says");
    c.received(
        at(1),
        r#"{"type":"self_privacy","last_seen":"nobody","receipts":"on"}"#,
    );
    let told = Privacy {
        last_seen: LastSeen::Nobody,
        receipts: Receipts::On,
    };
    assert_eq!(c.privacy(), told);
    let mut events = Vec::new();
    while let Some(e) = c.poll_event() {
        events.push(e);
    }
    assert!(
        events.contains(&ClientEvent::SelfPrivacy(told)),
        "{events:?}"
    );
    // Live: sent at once, once.
    c.set_privacy(None, Some(Receipts::Off));
    assert_eq!(sent(&mut c), [r#"{"type":"privacy","receipts":"off"}"#]);
    // A reconnect: nothing left to resend, and a welcome not followed by
    // `self_privacy` means both are open again.
    c.closed(at(2), Some(1001));
    let retry = c.next_deadline(at(2)).unwrap();
    c.tick(retry);
    c.opened(retry);
    c.received(retry, &welcome("tok2"));
    assert!(sent(&mut c).iter().all(|f| !f.contains("privacy")));
    assert_eq!(c.privacy(), Privacy::default());
    // A value this client does not know reads as the open one.
    c.received(
        retry,
        r#"{"type":"self_privacy","last_seen":"friends","receipts":"off"}"#,
    );
    assert_eq!(
        c.privacy(),
        Privacy {
            last_seen: LastSeen::Everyone,
            receipts: Receipts::Off
        }
    );
}
