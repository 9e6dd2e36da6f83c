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
    let off = c.subscribe(listener.as_ref().clone().unchecked_into());
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
