//! The rule, reason by reason, on devices a [`Machine`] reports at given times.

use core::time::Duration;

use super::*;
use crate::ids::{ResumeToken, UserId};
use crate::machine::Machine;
use crate::policy::TimingPolicy;
use crate::presence::Millis;

const PUSH_AFTER: Duration = Duration::from_secs(120);

fn at(secs: u64) -> Millis {
    Millis(1_764_338_400_000 + secs * 1000)
}

fn room(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

/// Ana with one connection per `(conn, device)`, all joined to #design and #random.
fn ana(devices: &[(u64, DeviceKind)]) -> Machine {
    let mut m = Machine::new(TimingPolicy::default());
    for &(c, kind) in devices {
        let token = ResumeToken::new(format!("t{c}")).unwrap();
        m.connect(
            at(0),
            UserId::new("ana").unwrap(),
            ConnId(c),
            token,
            None,
            Activity::Active,
        )
        .unwrap();
        m.set_device(ConnId(c), kind).unwrap();
        m.join(at(0), ConnId(c), room("design")).unwrap();
        m.join(at(0), ConnId(c), room("random")).unwrap();
    }
    m
}

fn decision(m: &Machine, now: Millis, status: Status, msg: Message<'_>) -> (Decision, Reason) {
    let devices = m.devices(now, &UserId::new("ana").unwrap());
    let read = m.marker(&UserId::new("ana").unwrap(), msg.room);
    decide(
        &Recipient {
            devices: &devices,
            status,
            read,
        },
        &msg,
        PUSH_AFTER,
    )
}

fn msg(r: &RoomId) -> Message<'_> {
    Message {
        room: r,
        mention: false,
        marker: None,
    }
}

#[test]
fn a_page_showing_the_room_is_live_another_room_is_live_in_the_app() {
    let mut m = ana(&[(1, DeviceKind::Desktop)]);
    let (design, random) = (room("design"), room("random"));
    m.set_view(Millis(0), ConnId(1), Some(design.clone()))
        .unwrap();
    let live = (Decision::Live, Reason::Viewing);
    assert_eq!(decision(&m, at(1), Status::Available, msg(&design)), live);
    assert_eq!(
        decision(&m, at(1), Status::Available, msg(&random)),
        (Decision::Live, Reason::Active)
    );
    // Reading without input still counts, until the push threshold.
    m.set_activity(at(60), ConnId(1), Activity::Idle(IdleReason::NoInput))
        .unwrap();
    assert_eq!(decision(&m, at(100), Status::Available, msg(&design)), live);
    assert_eq!(
        decision(&m, at(100), Status::Available, msg(&random)),
        (Decision::Live, Reason::Recent)
    );
    // idle_after (60 s) before the report plus 60 s after it: 2 min without input.
    assert_eq!(
        decision(&m, at(120), Status::Available, msg(&design)),
        (Decision::Push, Reason::Idle)
    );
    // Input again: live at once.
    m.set_activity(at(130), ConnId(1), Activity::Active)
        .unwrap();
    assert_eq!(decision(&m, at(130), Status::Available, msg(&design)), live);
}

#[test]
fn hidden_or_locked_everywhere_is_background_and_a_view_needs_the_page_in_front() {
    let mut m = ana(&[(1, DeviceKind::Desktop), (2, DeviceKind::Mobile)]);
    let design = room("design");
    m.set_view(Millis(0), ConnId(1), Some(design.clone()))
        .unwrap();
    m.set_activity(at(1), ConnId(1), Activity::Idle(IdleReason::Hidden))
        .unwrap();
    m.set_activity(at(1), ConnId(2), Activity::Idle(IdleReason::Locked))
        .unwrap();
    assert_eq!(
        decision(&m, at(2), Status::Available, msg(&design)),
        (Decision::Push, Reason::Background),
        "a hidden tab showing the room sees nothing"
    );
    // A blurred window is in view but not in front: recent, then idle.
    m.set_activity(at(3), ConnId(1), Activity::Idle(IdleReason::Blurred))
        .unwrap();
    assert_eq!(
        decision(&m, at(4), Status::Available, msg(&design)),
        (Decision::Live, Reason::Recent)
    );
    assert_eq!(
        decision(&m, at(200), Status::Available, msg(&design)),
        (Decision::Push, Reason::Idle)
    );
}

#[test]
fn busy_holds_back_all_but_mentions_and_reading_holds_back_everything() {
    let mut m = ana(&[(1, DeviceKind::Desktop)]);
    let (design, random) = (room("design"), room("random"));
    m.set_view(Millis(0), ConnId(1), Some(design.clone()))
        .unwrap();
    assert_eq!(
        decision(&m, at(1), Status::Busy, msg(&random)),
        (Decision::None, Reason::Busy)
    );
    let mention = Message {
        room: &random,
        mention: true,
        marker: None,
    };
    assert_eq!(
        decision(&m, at(1), Status::Busy, mention),
        (Decision::Live, Reason::Active)
    );
    assert_eq!(
        decision(&m, at(1), Status::Busy, msg(&design)),
        (Decision::Live, Reason::Viewing),
        "they look at it anyway"
    );
    m.read(at(2), ConnId(1), &random, 1042).unwrap();
    let seen = Message {
        room: &random,
        mention: true,
        marker: Some(1042),
    };
    assert_eq!(
        decision(&m, at(2), Status::Available, seen),
        (Decision::None, Reason::Read)
    );
    let newer = Message {
        room: &random,
        mention: false,
        marker: Some(1043),
    };
    assert_eq!(
        decision(&m, at(2), Status::Available, newer),
        (Decision::Live, Reason::Active)
    );
}

#[test]
fn no_live_connection_is_offline_and_invisibility_is_seen_through() {
    let mut m = ana(&[(1, DeviceKind::Mobile)]);
    let design = room("design");
    m.set_view(Millis(0), ConnId(1), Some(design.clone()))
        .unwrap();
    assert_eq!(
        decision(&m, at(1), Status::Invisible, msg(&design)),
        (Decision::Live, Reason::Viewing),
        "an invisible user at the app is not pushed"
    );
    m.dropped(at(2), ConnId(1));
    assert_eq!(
        decision(&m, at(3), Status::Available, msg(&design)),
        (Decision::Push, Reason::Offline),
        "a connection in its grace is no device"
    );
    let nobody = Machine::new(TimingPolicy::default());
    assert_eq!(
        decision(&nobody, at(3), Status::Available, msg(&design)),
        (Decision::Push, Reason::Offline)
    );
}

#[test]
fn a_view_is_of_a_joined_room_and_leaving_it_ends_the_view() {
    let mut m = ana(&[(1, DeviceKind::Tablet)]);
    assert_eq!(
        m.set_view(Millis(0), ConnId(1), Some(room("elsewhere"))),
        Err(crate::machine::MachineError::NotInRoom)
    );
    m.set_view(Millis(0), ConnId(1), Some(room("design")))
        .unwrap();
    m.leave(at(1), ConnId(1), &room("design")).unwrap();
    let devices = m.devices(at(1), &UserId::new("ana").unwrap());
    assert_eq!(devices.len(), 1);
    assert_eq!(
        (devices[0].kind, &devices[0].view),
        (DeviceKind::Tablet, &None)
    );
}

#[test]
fn a_phone_just_put_away_does_not_hold_back_a_push_for_an_idle_laptop() {
    let mut m = ana(&[(1, DeviceKind::Desktop), (2, DeviceKind::Mobile)]);
    let random = room("random");
    m.set_activity(at(1), ConnId(1), Activity::Idle(IdleReason::NoInput))
        .unwrap();
    m.set_activity(at(100), ConnId(2), Activity::Idle(IdleReason::Hidden))
        .unwrap();
    assert_eq!(
        decision(&m, at(101), Status::Available, msg(&random)),
        (Decision::Push, Reason::Idle),
        "the laptop had no input for 160 s; the hidden phone is not in front of anyone"
    );
}
