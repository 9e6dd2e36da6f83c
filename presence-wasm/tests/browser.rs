//! Browser tests in headless Chromium, against a real presence-server that
//! `cargo xtask test` starts (dev auth, short timings) and names in
//! `PRESENCE_TEST_WS` at compile time. Real DOM events drive the SDK; a
//! second client in the same page observes what the server tells others.
//!
//! `cargo xtask test` runs them; by hand: start the server as xtask does and
//! `PRESENCE_TEST_WS=ws://127.0.0.1:PORT/ws cargo test -p presence-wasm --target wasm32-unknown-unknown`.

#![cfg(target_arch = "wasm32")]
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::rc::Rc;

use gloo_timers::future::TimeoutFuture;
use js_sys::{Object, Reflect};
use presence_wasm::PresenceClient;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

fn server() -> &'static str {
    option_env!("PRESENCE_TEST_WS").unwrap_or("ws://127.0.0.1:4000/ws")
}

/// A unique name per test, so tests sharing one server never see each other.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", (js_sys::Math::random() * 1e12) as u64)
}

fn options(token: &str, extra: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    let set = |k: &str, v: JsValue| Reflect::set(&o, &k.into(), &v).unwrap();
    set("url", server().into());
    set("token", token.into());
    set("resume", false.into());
    for (k, v) in extra {
        set(k, v.clone());
    }
    o.into()
}

fn connect(token: &str, extra: &[(&str, JsValue)]) -> PresenceClient {
    PresenceClient::connect(options(token, extra).unchecked_into()).expect("connect")
}

fn get(v: &JsValue, key: &str) -> JsValue {
    Reflect::get(v, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

/// `user`'s presence in `room` as `observer` sees it, as "state" or "state:reason".
fn seen(observer: &PresenceClient, room: &str, user: &str) -> Option<String> {
    let members: js_sys::Array = observer.members(room).ok()?.unchecked_into();
    members
        .iter()
        .find(|m| get(m, "user").as_string().as_deref() == Some(user))
        .map(|m| {
            let state = get(&m, "state").as_string().unwrap_or_default();
            match get(&m, "reason").as_string() {
                Some(r) => format!("{state}:{r}"),
                None => state,
            }
        })
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        TimeoutFuture::new(50).await;
    }
    panic!("timed out after 5 s waiting for: {what}");
}

fn window() -> web_sys::Window {
    web_sys::window().unwrap()
}

fn dispatch(target: &web_sys::EventTarget, kind: &str) {
    target
        .dispatch_event(&web_sys::Event::new(kind).unwrap())
        .unwrap();
}

/// Ana and Bob in a fresh room, each with extra connect options.
struct Pair {
    room: String,
    a: String,
    b: String,
    ca: PresenceClient,
    cb: PresenceClient,
}

fn pair(extra_a: &[(&str, JsValue)], extra_b: &[(&str, JsValue)]) -> Pair {
    let room = unique("room");
    let (a, b) = (unique("ana"), unique("bob"));
    let ca = connect(&a, extra_a);
    let cb = connect(&b, extra_b);
    ca.join(&room).unwrap();
    cb.join(&room).unwrap();
    Pair { room, a, b, ca, cb }
}

#[wasm_bindgen_test]
fn protocol_version_matches_core() {
    assert_eq!(
        presence_wasm::protocol_version(),
        presence_core::PROTOCOL_VERSION
    );
}

#[wasm_bindgen_test]
fn bad_options_and_arguments_throw_errors_with_codes() {
    let code = |e: JsValue| get(&e, "code").as_string().unwrap();
    let err = PresenceClient::connect(JsValue::from(5).unchecked_into())
        .err()
        .unwrap();
    assert!(err.is_instance_of::<js_sys::Error>());
    assert_eq!(code(err), "invalid_options");
    let bad_url = options("ana", &[("url", "http://x".into())]);
    assert_eq!(
        code(
            PresenceClient::connect(bad_url.unchecked_into())
                .err()
                .unwrap()
        ),
        "invalid_options"
    );
    let bad_ms = options("ana", &[("idleAfterMs", "soon".into())]);
    assert_eq!(
        code(
            PresenceClient::connect(bad_ms.unchecked_into())
                .err()
                .unwrap()
        ),
        "invalid_options"
    );
    let bad_flag = options("ana", &[("idleDetection", "yes".into())]);
    let err = PresenceClient::connect(bad_flag.unchecked_into())
        .err()
        .unwrap();
    assert_eq!(
        get(&err, "message").as_string().unwrap(),
        "idleDetection must be a boolean"
    );

    let bad_device = options("ana", &[("device", "phone".into())]);
    let err = PresenceClient::connect(bad_device.unchecked_into())
        .err()
        .unwrap();
    assert_eq!(
        get(&err, "message").as_string().unwrap(),
        "device must be desktop, mobile, tablet or other"
    );
    connect(&unique("ana"), &[("device", "tablet".into())]).close();

    let c = connect(&unique("ana"), &[]);
    let not_a_list = JsValue::from("ana");
    assert_eq!(
        code(c.watch(not_a_list.unchecked_into()).unwrap_err()),
        "invalid_argument"
    );
    let not_ids: js_sys::Array = [JsValue::from("ana"), JsValue::from(5)].iter().collect();
    assert_eq!(
        code(c.watch(not_ids.unchecked_into()).unwrap_err()),
        "invalid_argument"
    );
    assert_eq!(code(c.join("").unwrap_err()), "invalid_argument");
    assert_eq!(code(c.join("a b").unwrap_err()), "invalid_argument");
    assert_eq!(code(c.typing("never-joined").unwrap_err()), "not_in_room");
    assert_eq!(
        code(c.view(&"never-joined".into()).unwrap_err()),
        "not_in_room"
    );
    assert_eq!(code(c.view(&5.into()).unwrap_err()), "invalid_argument");
    c.join("r").unwrap();
    c.view(&"r".into()).unwrap();
    c.view(&JsValue::NULL).unwrap();
    assert_eq!(code(c.mark_read("r", -1.0).unwrap_err()), "invalid_marker");
    assert_eq!(
        code(
            c.set_status(JsValue::from("asleep").unchecked_into(), None)
                .unwrap_err()
        ),
        "invalid_argument"
    );
    c.close();
}

#[wasm_bindgen_test]
async fn users_see_each_other_join_and_leave() {
    let Pair { room, a, b, ca, cb } = pair(&[], &[]);
    until("bob sees ana active", || {
        seen(&cb, &room, &a).as_deref() == Some("active")
    })
    .await;
    until("ana sees bob active", || {
        seen(&ca, &room, &b).as_deref() == Some("active")
    })
    .await;
    ca.close();
    until("bob sees ana offline", || {
        seen(&cb, &room, &a).as_deref() == Some("offline")
    })
    .await;
    cb.close();
}

#[wasm_bindgen_test]
async fn no_input_goes_idle_and_a_real_keydown_makes_active_again() {
    let Pair {
        room, a, ca, cb, ..
    } = pair(&[("idleAfterMs", 400.into())], &[]);
    until("ana idle for lack of input", || {
        seen(&cb, &room, &a).as_deref() == Some("idle:no_input")
    })
    .await;
    let key = web_sys::KeyboardEvent::new("keydown").unwrap();
    window().dispatch_event(&key).unwrap();
    until("ana active after a keydown", || {
        seen(&cb, &room, &a).as_deref() == Some("active")
    })
    .await;
    ca.close();
    cb.close();
}

#[wasm_bindgen_test]
async fn a_hidden_page_goes_idle_with_reason_hidden() {
    let Pair {
        room, a, ca, cb, ..
    } = pair(
        &[("hiddenAfterMs", 0.into())],
        &[("hiddenAfterMs", 60_000.into())],
    );
    until("ana active", || {
        seen(&cb, &room, &a).as_deref() == Some("active")
    })
    .await;
    let document = window().document().unwrap();
    let hide = |hidden: bool| {
        let define = js_sys::Function::new_with_args(
            "h",
            "Object.defineProperty(document, 'hidden', { value: h, configurable: true });",
        );
        define.call1(&JsValue::NULL, &hidden.into()).unwrap();
    };
    hide(true);
    dispatch(&document, "visibilitychange");
    until("ana idle: hidden", || {
        seen(&cb, &room, &a).as_deref() == Some("idle:hidden")
    })
    .await;
    hide(false);
    dispatch(&document, "visibilitychange");
    until("ana active again", || {
        seen(&cb, &room, &a).as_deref() == Some("active")
    })
    .await;
    ca.close();
    cb.close();
}

#[wasm_bindgen_test]
async fn typing_bound_to_a_textarea_starts_on_input_and_stops_on_blur() {
    let Pair {
        room, a, ca, cb, ..
    } = pair(&[], &[]);
    let events = Rc::new(RefCell::new(Vec::<String>::new()));
    let log = events.clone();
    let on_typing = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        log.borrow_mut().push(format!(
            "{}:{}",
            get(&e, "user").as_string().unwrap(),
            get(&e, "typing").as_bool().unwrap()
        ));
    });
    let _off = cb.on_typing(on_typing.as_ref().clone().unchecked_into());
    until("ana in the room", || seen(&cb, &room, &a).is_some()).await;
    let document = window().document().unwrap();
    let area = document.create_element("textarea").unwrap();
    document.body().unwrap().append_child(&area).unwrap();
    let unbind = ca.bind_typing(&room, &area).unwrap();
    dispatch(&area, "input");
    until("bob sees ana typing", || {
        events.borrow().contains(&format!("{a}:true"))
    })
    .await;
    dispatch(&area, "blur");
    until("bob sees ana stop", || {
        events.borrow().contains(&format!("{a}:false"))
    })
    .await;
    let unbind: js_sys::Function = unbind.unchecked_into();
    unbind.call0(&JsValue::NULL).unwrap();
    area.remove();
    ca.close();
    cb.close();
}

#[wasm_bindgen_test]
async fn two_tabs_of_one_user_are_one_presence_active_if_either_is() {
    let room = unique("room");
    let (a, b) = (unique("ana"), unique("bob"));
    let tab1 = connect(&a, &[("idleAfterMs", 300.into())]);
    let tab2 = connect(&a, &[("idleAfterMs", 60_000.into())]);
    let cb = connect(&b, &[]);
    tab1.join(&room).unwrap();
    tab2.join(&room).unwrap();
    cb.join(&room).unwrap();
    until("ana seen", || seen(&cb, &room, &a).is_some()).await;
    TimeoutFuture::new(800).await; // tab 1 went idle meanwhile
    let members: js_sys::Array = cb.members(&room).unwrap().unchecked_into();
    let anas = members
        .iter()
        .filter(|m| get(m, "user").as_string().as_deref() == Some(a.as_str()))
        .count();
    assert_eq!(anas, 1, "two tabs, one member");
    assert_eq!(
        seen(&cb, &room, &a).as_deref(),
        Some("active"),
        "tab 2 is active"
    );
    tab2.close();
    until("ana idle once only tab 1 is left", || {
        seen(&cb, &room, &a).as_deref() == Some("idle:no_input")
    })
    .await;
    tab1.close();
    cb.close();
}

#[wasm_bindgen_test]
async fn read_receipts_and_status_reach_others() {
    let Pair {
        room, a, ca, cb, ..
    } = pair(&[], &[]);
    until("ana seen", || seen(&cb, &room, &a).is_some()).await;
    ca.mark_read(&room, 42.0).unwrap();
    ca.set_status(
        JsValue::from("busy").unchecked_into(),
        Some("in a call".into()),
    )
    .unwrap();
    let receipt = |c: &PresenceClient| {
        let snap: JsValue = c.get_snapshot().into();
        get(&get(&get(&get(&snap, "rooms"), &room), "receipts"), &a).as_f64()
    };
    until("bob sees ana's receipt", || receipt(&cb) == Some(42.0)).await;
    let status = |c: &PresenceClient| {
        let members: js_sys::Array = c.members(&room).unwrap().unchecked_into();
        members
            .iter()
            .find(|m| get(m, "user").as_string().as_deref() == Some(a.as_str()))
            .map(|m| (get(&m, "status").as_string(), get(&m, "text").as_string()))
    };
    until("bob sees ana busy", || {
        status(&cb) == Some((Some("busy".into()), Some("in a call".into())))
    })
    .await;
    ca.set_status(JsValue::from("invisible").unchecked_into(), None)
        .unwrap();
    until("invisible ana looks offline", || {
        seen(&cb, &room, &a).as_deref() == Some("offline")
    })
    .await;
    ca.close();
    cb.close();
}

#[wasm_bindgen_test]
async fn snapshot_is_stable_until_a_change_and_throwing_callbacks_are_contained() {
    let room = unique("room");
    let c = connect(&unique("ana"), &[]);
    let thrower = js_sys::Function::new_no_args("throw new Error('app bug')");
    let _off = c.on_presence(thrower.unchecked_into());
    let calls = Rc::new(RefCell::new(0));
    let n = calls.clone();
    let listener = Closure::<dyn FnMut()>::new(move || *n.borrow_mut() += 1);
    let off = c
        .subscribe(listener.as_ref().clone().unchecked_into())
        .unwrap();
    let connected = |c: &PresenceClient| {
        get(&c.get_snapshot().into(), "connection")
            .as_string()
            .as_deref()
            == Some("connected")
    };
    until("connected", || connected(&c)).await;
    let s1: JsValue = c.get_snapshot().into();
    let s2: JsValue = c.get_snapshot().into();
    assert!(Object::is(&s1, &s2), "same object while nothing changed");
    c.join(&room).unwrap();
    until("room snapshot arrived", || {
        !get(&get(&c.get_snapshot().into(), "rooms"), &room).is_undefined()
    })
    .await;
    assert!(
        !Object::is(&s1, &c.get_snapshot().into()),
        "a new object after a change"
    );
    assert!(*calls.borrow() > 0, "subscribers were told");
    let off: js_sys::Function = off.unchecked_into();
    off.call0(&JsValue::NULL).unwrap();
    c.close();
}

#[wasm_bindgen_test]
async fn methods_work_passed_on_alone_and_unchanged_rooms_keep_their_identity() {
    let c = js_object(connect(&unique("ana"), &[]));
    // As `useSyncExternalStore(client.subscribe, client.getSnapshot)` calls them: `this` undefined.
    let alone = |name: &str| -> js_sys::Function { get(&c, name).dyn_into().expect(name) };
    let snapshot = || alone("getSnapshot").call0(&JsValue::UNDEFINED).unwrap();
    let calls = Rc::new(RefCell::new(0));
    let n = calls.clone();
    let listener = Closure::<dyn FnMut()>::new(move || *n.borrow_mut() += 1);
    alone("subscribe")
        .call1(&JsValue::UNDEFINED, listener.as_ref())
        .unwrap();
    let (quiet, busy) = (unique("quiet"), unique("busy"));
    let room_of = |name: &str| get(&get(&snapshot(), "rooms"), name);
    alone("join")
        .call1(&JsValue::UNDEFINED, &quiet.as_str().into())
        .unwrap();
    until("the quiet room's snapshot", || {
        !room_of(&quiet).is_undefined()
    })
    .await;
    assert!(*calls.borrow() > 0, "subscribe's listener was called");
    let (before, quiet_before) = (snapshot(), room_of(&quiet));
    alone("join")
        .call1(&JsValue::UNDEFINED, &busy.as_str().into())
        .unwrap();
    until("the busy room's snapshot", || {
        !room_of(&busy).is_undefined()
    })
    .await;
    assert!(!Object::is(&before, &snapshot()), "a new snapshot");
    assert!(
        Object::is(&quiet_before, &room_of(&quiet)),
        "the room that did not change is the same object"
    );
    alone("close").call0(&JsValue::UNDEFINED).unwrap();
    assert_eq!(
        get(&snapshot(), "connection").as_string().as_deref(),
        Some("closed")
    );
}

/// The JS object wasm-bindgen hands to apps, to call `free`, `[Symbol.dispose]` and methods
/// through their JS names.
fn js_object(c: PresenceClient) -> JsValue {
    c.into_js()
}

fn call_js(obj: &JsValue, method: &JsValue, args: &[JsValue]) -> Result<JsValue, JsValue> {
    let f: js_sys::Function = Reflect::get(obj, method)?.dyn_into()?;
    f.apply(obj, &args.iter().collect())
}

fn code_of(e: &JsValue) -> Option<String> {
    assert!(e.is_instance_of::<js_sys::Error>(), "a real Error: {e:?}");
    get(e, "code").as_string()
}

fn snapshot_field(c: &PresenceClient, key: &str) -> JsValue {
    get(&c.get_snapshot().into(), key)
}

/// Ana and Bob in one room, each seeing the other active.
async fn met() -> Pair {
    let p = pair(&[], &[]);
    let (room, a, b) = (p.room.clone(), p.a.clone(), p.b.clone());
    until("bob sees ana active", || {
        seen(&p.cb, &room, &a).as_deref() == Some("active")
    })
    .await;
    until("ana sees bob active", || {
        seen(&p.ca, &room, &b).as_deref() == Some("active")
    })
    .await;
    p
}

/// Ms from now until `observer` sees `user` offline in `room`.
async fn ms_until_offline(observer: &PresenceClient, room: &str, user: &str, t0: f64) -> f64 {
    let gone = Rc::new(RefCell::new(None::<f64>));
    let (g, u) = (gone.clone(), user.to_owned());
    let on_presence = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        let p = get(&e, "presence");
        if get(&p, "user").as_string().as_deref() == Some(u.as_str())
            && get(&p, "state").as_string().as_deref() == Some("offline")
            && g.borrow().is_none()
        {
            *g.borrow_mut() = Some(js_sys::Date::now());
        }
    });
    let off: js_sys::Function = observer
        .on_presence(on_presence.as_ref().clone().unchecked_into())
        .unwrap()
        .unchecked_into();
    until("the user is seen offline", || {
        gone.borrow().is_some() || seen(observer, room, user).as_deref() == Some("offline")
    })
    .await;
    off.call0(&JsValue::NULL).unwrap();
    let at = gone.borrow().unwrap_or_else(js_sys::Date::now);
    at - t0
}

#[wasm_bindgen_test]
async fn free_says_leaving_and_others_see_the_user_go_within_the_leave_grace() {
    // The browser-test server: leave grace 150 ms, offline grace 400 ms. A socket left open
    // (as `free()` once did) keeps the user active; a socket closed without `leaving` takes
    // the 400 ms grace.
    let Pair {
        room, a, ca, cb, ..
    } = met().await;
    let ana = js_object(ca);
    let t0 = js_sys::Date::now();
    call_js(&ana, &"free".into(), &[]).unwrap();
    let ms = ms_until_offline(&cb, &room, &a, t0).await;
    assert!(
        ms < 400.0,
        "seen offline after {ms} ms, beyond the leave grace"
    );
    cb.close();
    // `[Symbol.dispose]` (what `using` calls) does the same.
    let Pair {
        room, a, ca, cb, ..
    } = met().await;
    let ana = js_object(ca);
    let dispose = js_sys::eval("Symbol.dispose").unwrap();
    assert!(dispose.is_symbol(), "Chromium has Symbol.dispose");
    let t0 = js_sys::Date::now();
    call_js(&ana, &dispose, &[]).unwrap();
    let ms = ms_until_offline(&cb, &room, &a, t0).await;
    assert!(
        ms < 400.0,
        "seen offline after {ms} ms, beyond the leave grace"
    );
    cb.close();
}

#[wasm_bindgen_test]
async fn calls_after_close_or_free_throw_closed() {
    let c = connect(&unique("ana"), &[]);
    until("connected", || {
        snapshot_field(&c, "connection").as_string().as_deref() == Some("connected")
    })
    .await;
    c.close();
    c.close(); // again: nothing
    let closed = |r: Result<(), JsValue>| code_of(&r.unwrap_err());
    assert_eq!(closed(c.join("r")).as_deref(), Some("closed"));
    assert_eq!(closed(c.leave("r")).as_deref(), Some("closed"));
    assert_eq!(closed(c.mark_read("r", 1.0)).as_deref(), Some("closed"));
    assert_eq!(closed(c.typing("r")).as_deref(), Some("closed"));
    let nobody: js_sys::Array = [JsValue::from("bob")].iter().collect();
    assert_eq!(
        closed(c.watch(nobody.clone().unchecked_into())).as_deref(),
        Some("closed")
    );
    let f = js_sys::Function::new_no_args("");
    assert_eq!(
        code_of(&c.on_presence(f.clone().unchecked_into()).err().unwrap()).as_deref(),
        Some("closed")
    );
    assert_eq!(
        code_of(&c.subscribe(f.clone()).err().unwrap()).as_deref(),
        Some("closed")
    );
    // The snapshot still answers (React may read it while unmounting).
    assert_eq!(
        snapshot_field(&c, "connection").as_string().as_deref(),
        Some("closed")
    );
    assert_eq!(snapshot_field(&c, "stale").as_bool(), Some(true));

    // After `free()`, through the JS object as an app holds it: a coded Error, not
    // "null pointer passed to rust", and never a reconnect.
    let c = js_object(connect(&unique("ana"), &[]));
    call_js(&c, &"free".into(), &[]).unwrap();
    call_js(&c, &"free".into(), &[]).unwrap();
    for (method, args) in [
        ("join", vec![JsValue::from("r")]),
        ("setStatus", vec![JsValue::from("busy")]),
        ("members", vec![JsValue::from("r")]),
        ("onError", vec![f.clone().into()]),
    ] {
        let e = call_js(&c, &method.into(), &args).unwrap_err();
        assert_eq!(code_of(&e).as_deref(), Some("closed"), "{method}");
    }
    window()
        .dispatch_event(&web_sys::Event::new("online").unwrap())
        .unwrap();
    TimeoutFuture::new(300).await;
    let snap = call_js(&c, &"getSnapshot".into(), &[]).unwrap();
    assert_eq!(
        get(&snap, "connection").as_string().as_deref(),
        Some("closed"),
        "the online event does not bring a freed client back"
    );
}

#[wasm_bindgen_test]
async fn the_snapshot_is_stale_while_reconnecting() {
    // Nothing listens on port 1: the client keeps reconnecting.
    let nowhere = connect(&unique("ana"), &[("url", "ws://127.0.0.1:1/ws".into())]);
    nowhere.join(&unique("room")).unwrap();
    until("reconnecting", || {
        snapshot_field(&nowhere, "connection")
            .as_string()
            .as_deref()
            == Some("reconnecting")
    })
    .await;
    assert_eq!(snapshot_field(&nowhere, "stale").as_bool(), Some(true));
    nowhere.close();

    // A live client dropped by the server (a flood is closed with 1008) is stale until it has
    // reconnected and its room's snapshot is back.
    let Pair {
        room, a, ca, cb, ..
    } = met().await;
    assert_eq!(snapshot_field(&ca, "stale").as_bool(), Some(false));
    let states = Rc::new(RefCell::new(Vec::<(String, bool)>::new()));
    let log = states.clone();
    let c2 = Rc::new(ca);
    let c3 = c2.clone();
    let on_connection = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        let state = get(&e, "state").as_string().unwrap_or_default();
        let stale = snapshot_field(&c3, "stale").as_bool().unwrap_or(false);
        log.borrow_mut().push((state, stale));
    });
    let _off = c2
        .on_connection(on_connection.as_ref().clone().unchecked_into())
        .unwrap();
    for i in 0..600 {
        let status = if i % 2 == 0 { "busy" } else { "away" };
        c2.set_status(JsValue::from(status).unchecked_into(), None)
            .unwrap();
    }
    until("dropped and reconnected", || {
        let s = states.borrow();
        s.iter().any(|(st, _)| st == "reconnecting")
            && s.last().is_some_and(|(st, _)| st == "connected")
    })
    .await;
    assert!(
        states
            .borrow()
            .iter()
            .filter(|(st, _)| st != "connected")
            .all(|(_, stale)| *stale),
        "stale whenever not connected: {:?}",
        states.borrow()
    );
    until("the room is back and fresh", || {
        snapshot_field(&c2, "stale").as_bool() == Some(false)
    })
    .await;
    until("bob still sees ana", || {
        seen(&cb, &room, &a).is_some_and(|s| s != "offline")
    })
    .await;
    c2.close();
    cb.close();
}

#[wasm_bindgen_test]
fn a_65th_room_throws_too_many_rooms() {
    let c = connect(&unique("ana"), &[]);
    for i in 0..64 {
        c.join(&format!("r{i}")).unwrap();
    }
    let e = c.join("r64").unwrap_err();
    assert_eq!(code_of(&e).as_deref(), Some("too_many_rooms"));
    c.join("r0").unwrap(); // already joined: fine
    c.close();
}

/// Connection states a client reports from now on.
fn record_connections(c: &PresenceClient) -> (Rc<RefCell<Vec<String>>>, JsValue) {
    let states = Rc::new(RefCell::new(Vec::new()));
    let log = states.clone();
    let cb = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        log.borrow_mut()
            .push(get(&e, "state").as_string().unwrap_or_default());
    });
    let off = c
        .on_connection(cb.as_ref().clone().unchecked_into())
        .unwrap();
    cb.forget();
    (states, off.into())
}

#[wasm_bindgen_test]
async fn pagehide_closes_for_good_until_pageshow_from_the_back_forward_cache_resumes() {
    let Pair {
        room, a, b, ca, cb, ..
    } = met().await;
    let (states, _off) = record_connections(&ca);
    let pageshow = || {
        js_sys::eval(
            "window.dispatchEvent(new PageTransitionEvent('pageshow', { persisted: true }))",
        )
        .unwrap();
    };
    // The page goes into the cache: `leaving`, and the server's 1000 close that follows it
    // starts no reconnect (a timer, an `online` event neither).
    dispatch(&window(), "pagehide");
    TimeoutFuture::new(300).await;
    dispatch(&window(), "online");
    TimeoutFuture::new(300).await;
    assert_eq!(
        snapshot_field(&ca, "connection").as_string().as_deref(),
        Some("closed")
    );
    assert!(
        !states.borrow().iter().any(|s| s == "connecting"),
        "no reconnect after pagehide: {:?}",
        states.borrow()
    );
    // (Bob's client is in the same page: it went too, and comes back with it.)
    // Restored: it connects again by itself and is seen.
    pageshow();
    let live = |c: &PresenceClient| {
        snapshot_field(c, "connection").as_string().as_deref() == Some("connected")
            && snapshot_field(c, "stale").as_bool() == Some(false)
    };
    until("both connected again with fresh rooms", || {
        live(&ca) && live(&cb)
    })
    .await;
    until("each sees the other active again", || {
        seen(&cb, &room, &a).as_deref() == Some("active")
            && seen(&ca, &room, &b).as_deref() == Some("active")
    })
    .await;
    // Hidden and shown again within the leave grace: resumed, so bob sees nothing.
    let gone = Rc::new(RefCell::new(false));
    let (g, user) = (gone.clone(), a.clone());
    let watch_bob = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        let p = get(&e, "presence");
        if get(&p, "user").as_string().as_deref() == Some(user.as_str())
            && get(&p, "state").as_string().as_deref() == Some("offline")
        {
            *g.borrow_mut() = true;
        }
    });
    let _off_b = cb
        .on_presence(watch_bob.as_ref().clone().unchecked_into())
        .unwrap();
    dispatch(&window(), "pagehide");
    pageshow();
    until("ana connected again", || {
        snapshot_field(&ca, "connection").as_string().as_deref() == Some("connected")
    })
    .await;
    TimeoutFuture::new(500).await;
    assert!(!*gone.borrow(), "a resume within the leave grace is silent");
    ca.close();
    cb.close();
}

#[wasm_bindgen_test]
async fn leaving_one_room_is_left_there_while_another_room_sees_the_user_online() {
    let (r1, r2) = (unique("room"), unique("room"));
    let (a, b) = (unique("ana"), unique("bob"));
    let cb = connect(&b, &[]);
    cb.join(&r1).unwrap();
    cb.join(&r2).unwrap();
    // Every onPresence bob hears about ana, as "room:kind".
    let heard: Rc<RefCell<Vec<String>>> = Rc::default();
    let log = heard.clone();
    let ana = a.clone();
    let on = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        let presence = get(&e, "presence");
        if get(&presence, "user").as_string().as_deref() == Some(ana.as_str()) {
            let room = get(&e, "room").as_string().unwrap_or_default();
            let kind = get(&e, "kind").as_string().unwrap_or_default();
            log.borrow_mut().push(format!("{room}:{kind}"));
        }
    });
    let _off = cb
        .on_presence(on.as_ref().clone().unchecked_into())
        .unwrap();
    let ca = connect(&a, &[]);
    ca.join(&r1).unwrap();
    ca.join(&r2).unwrap();
    until("bob sees ana in both rooms", || {
        seen(&cb, &r1, &a).is_some() && seen(&cb, &r2, &a).is_some()
    })
    .await;
    ca.leave(&r1).unwrap();
    until("bob hears ana left r1", || {
        heard.borrow().contains(&format!("{r1}:left"))
    })
    .await;
    assert_eq!(
        seen(&cb, &r1, &a),
        None,
        "left: no longer a member, not offline"
    );
    assert_eq!(seen(&cb, &r2, &a).as_deref(), Some("active"));
    TimeoutFuture::new(300).await;
    let mut heard = heard.borrow().clone();
    heard.sort();
    let mut want = vec![
        format!("{r1}:joined"),
        format!("{r1}:left"),
        format!("{r2}:joined"),
    ];
    want.sort();
    assert_eq!(heard, want, "each change once, nothing else");
    ca.close();
    cb.close();
}

#[wasm_bindgen_test]
async fn set_data_reaches_another_user_and_an_oversized_object_is_refused_with_its_code() {
    let Pair { room, a, b, ca, cb } = pair(&[], &[]);
    until("bob sees ana", || seen(&cb, &room, &a).is_some()).await;
    let errors: Rc<RefCell<Vec<String>>> = Rc::default();
    let log = errors.clone();
    let on = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
        let code = get(&e, "code").as_string().unwrap_or_default();
        let frame = get(&e, "frame").as_string().unwrap_or_default();
        log.borrow_mut().push(format!("{frame}:{code}"));
    });
    let _off = ca.on_error(on.as_ref().clone().unchecked_into()).unwrap();
    let data = js_sys::JSON::parse(r#"{"viewing":"Q3 plan","cursor":{"x":0.25,"y":-3}}"#).unwrap();
    ca.set_data(&data).unwrap();
    let bobs_view_of_ana = || {
        let members: js_sys::Array = cb.members(&room).ok()?.unchecked_into();
        let m = members
            .iter()
            .find(|m| get(m, "user").as_string().as_deref() == Some(a.as_str()))?;
        js_sys::JSON::stringify(&get(&m, "data")).ok()?.as_string()
    };
    until("bob sees ana's data", || {
        bobs_view_of_ana().as_deref() == Some(r#"{"cursor":{"x":0.25,"y":-3},"viewing":"Q3 plan"}"#)
    })
    .await;
    let big = js_sys::JSON::parse(&format!(r#"{{"blob":"{}"}}"#, "x".repeat(2048))).unwrap();
    ca.set_data(&big).unwrap();
    until("the server refuses 2 KiB", || {
        errors.borrow().contains(&"data:data_too_large".to_owned())
    })
    .await;
    let code = |r: Result<(), JsValue>| get(&r.unwrap_err(), "code").as_string();
    let list: JsValue = js_sys::Array::of1(&1.into()).into();
    assert_eq!(
        code(ca.set_data(&list)).as_deref(),
        Some("invalid_argument")
    );
    let huge = js_sys::JSON::parse(&format!(r#"{{"blob":"{}"}}"#, "x".repeat(5000))).unwrap();
    assert_eq!(code(ca.set_data(&huge)).as_deref(), Some("data_too_large"));
    TimeoutFuture::new(200).await;
    assert!(
        bobs_view_of_ana().is_some_and(|d| d.contains("Q3 plan")),
        "the refused ones changed nothing"
    );
    let _ = b;
    ca.close();
    cb.close();
}
