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
            r#"{"type":"read","room":"general","marker":9}"#,
        ]
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
    assert_eq!(events.len(), 4, "{events:?}");
    c.received(
        at(3),
        r#"{"type":"diffs","room":"general","diffs":[{"type":"user_disconnected","user":"bob","last_seen":5}]}"#,
    );
    let view = &c.cache().room(&room("general")).unwrap();
    assert!(view.typing.is_empty(), "gone users stop typing");
    assert_eq!(view.members.get(&bob).unwrap().last_seen, Some(Millis(5)));
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
