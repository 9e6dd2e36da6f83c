//! Browser tests: run in headless Chromium with
//! `cargo test -p presence-wasm --target wasm32-unknown-unknown` (or `cargo xtask test`).

#![cfg(target_arch = "wasm32")]
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::rc::Rc;

use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn protocol_version_matches_core() {
    assert_eq!(
        presence_wasm::protocol_version(),
        presence_core::PROTOCOL_VERSION
    );
}

/// Proves the pipeline reaches a real DOM: a listener on a live element sees a dispatched event.
#[wasm_bindgen_test]
fn dom_listener_sees_dispatched_input_event() {
    let document = web_sys::window()
        .and_then(|window| window.document())
        .expect("a browser document");
    let body = document.body().expect("a document body");
    let element = document.create_element("input").expect("create <input>");
    body.append_child(&element).expect("attach <input>");

    let seen = Rc::new(Cell::new(0_u32));
    let counter = Rc::clone(&seen);
    let listener = Closure::<dyn FnMut(web_sys::Event)>::new(move |event: web_sys::Event| {
        assert_eq!(event.type_(), "input");
        counter.set(counter.get() + 1);
    });
    element
        .add_event_listener_with_callback("input", listener.as_ref().unchecked_ref())
        .expect("add listener");

    let event = web_sys::Event::new("input").expect("create event");
    element.dispatch_event(&event).expect("dispatch event");
    assert_eq!(seen.get(), 1, "listener saw the event exactly once");

    element
        .remove_event_listener_with_callback("input", listener.as_ref().unchecked_ref())
        .expect("remove listener");
    element.remove();
}
