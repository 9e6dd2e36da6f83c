//! The glue between the sans-I/O `presence_core::client::Client` and the
//! browser: a WebSocket, one timer, and the app's callbacks.
//!
//! Every entry point (a JS call, a socket event, a DOM event, the timer)
//! borrows the state, feeds the client, performs its actions, reschedules the
//! timer, releases the borrow, and only then calls the app's callbacks, so a
//! callback may call back into the SDK without a borrow panic.

use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use presence_core::client::{Action, Client};
use presence_core::{Millis, ResumeToken};
use wasm_bindgen::prelude::*;
use web_sys::WebSocket;

use crate::js::{self, Topic};
use crate::page::Watch;

/// Shared SDK state.
pub type Shared = Rc<RefCell<State>>;

/// The wall clock, in milliseconds since the epoch.
pub fn now() -> Millis {
    Millis(js_sys::Date::now() as u64)
}

/// An open (or opening) socket and the closure that keeps its handlers alive.
struct Socket {
    ws: WebSocket,
    _on: Closure<dyn FnMut(JsValue)>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        detach_socket(&self.ws);
    }
}

#[wasm_bindgen(module = "/src/browser.js")]
extern "C" {
    #[wasm_bindgen(js_name = openSocket)]
    fn open_socket(url: &str, token: &str, on: &Closure<dyn FnMut(JsValue)>) -> Option<WebSocket>;
    #[wasm_bindgen(js_name = fetchToken)]
    fn fetch_token(get: &js_sys::Function, on: &Closure<dyn FnMut(JsValue)>);
    #[wasm_bindgen(js_name = detachSocket)]
    fn detach_socket(ws: &WebSocket);
    #[wasm_bindgen(js_name = takeToken)]
    fn take_token(key: &str) -> Option<String>;
    #[wasm_bindgen(js_name = saveToken)]
    fn save_token(key: &str, token: &str);
    #[wasm_bindgen(js_name = setTimer)]
    fn set_timer(ms: u32, f: &Closure<dyn FnMut(JsValue)>) -> JsValue;
    #[wasm_bindgen(js_name = clearTimer)]
    fn clear_timer(id: &JsValue);
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = reportError)]
    fn report_error(error: &JsValue);
}

/// A JS function calling `f`. Every callback the SDK hands to JS has this one
/// type, since wasm-bindgen emits glue per closure signature.
pub fn callback(f: impl FnMut(JsValue) + 'static) -> Closure<dyn FnMut(JsValue)> {
    Closure::new(f)
}

/// A `setTimeout` (see `setTimer` in `browser.js`) cleared on drop.
struct Timer(JsValue);

impl Drop for Timer {
    fn drop(&mut self) {
        clear_timer(&self.0);
    }
}

/// Everything the SDK holds.
pub struct State {
    pub client: Client,
    url: String,
    /// The app's `getToken`, if it gave one.
    get_token: Option<js_sys::Function>,
    /// What `fetchToken` calls back: one closure for every token asked for.
    on_token: Option<Closure<dyn FnMut(JsValue)>>,
    socket: Option<Socket>,
    /// Bumped per socket, so a stale socket's late events are ignored.
    generation: u32,
    timer: Option<(Millis, Timer)>,
    /// What the timer calls: one closure for every timer of this client.
    on_timer: Option<Closure<dyn FnMut(JsValue)>>,
    /// The app's callbacks, store listeners (`Topic::Store`) included.
    callbacks: Vec<(u32, Topic, js_sys::Function)>,
    next_id: u32,
    /// Bumped on every change the snapshot can show.
    pub version: u64,
    pub snapshot: Option<(u64, JsValue)>,
    pub resume_key: Option<String>,
    /// The page listeners and screen-lock watcher, until `close()`.
    pub page: Option<(Watch, Option<Watch>)>,
}

impl State {
    pub fn new(
        client: Client,
        url: String,
        get_token: Option<js_sys::Function>,
        resume_key: Option<String>,
    ) -> Self {
        Self {
            client,
            url,
            get_token,
            on_token: None,
            socket: None,
            generation: 0,
            timer: None,
            on_timer: None,
            callbacks: Vec::new(),
            next_id: 0,
            version: 0,
            snapshot: None,
            resume_key,
            page: None,
        }
    }

    /// Registers a callback; returns its id for unsubscribing.
    pub fn on(&mut self, topic: Topic, f: js_sys::Function) -> u32 {
        self.next_id += 1;
        self.callbacks.push((self.next_id, topic, f));
        self.next_id
    }

    /// Removes a callback or store listener.
    pub fn off(&mut self, id: u32) {
        self.callbacks.retain(|(i, _, _)| *i != id);
    }

    /// Saves the resume token for a reload of this page.
    pub fn save_resume_token(&self) {
        if let (Some(key), Some(token)) = (&self.resume_key, self.client.resume_token()) {
            save_token(key, token.as_str());
        }
    }
}

/// Takes (reads and removes) the token an earlier page of this tab saved:
/// removing it means a duplicated tab cannot take over this tab's connection.
pub fn take_resume_token(key: &str) -> Option<ResumeToken> {
    ResumeToken::new(take_token(key)?).ok()
}

/// Feeds the client through `f`, performs what it asks, then tells the app.
///
/// Thin and generic; the work is in [`flush`], which is not, so the many
/// call sites do not each get a copy of it in the wasm binary.
pub fn with(shared: &Shared, f: impl FnOnce(&mut Client, Millis)) {
    let now = now();
    let Ok(mut state) = shared.try_borrow_mut() else {
        return; // unreachable by construction: callbacks run unborrowed
    };
    f(&mut state.client, now);
    drop(state);
    flush(shared, now);
}

fn flush(shared: &Shared, now: Millis) {
    let (events, callbacks) = {
        let Ok(mut state) = shared.try_borrow_mut() else {
            return;
        };
        perform(shared, &mut state);
        schedule(shared, &mut state, now);
        let mut events = Vec::new();
        let mut changed = false;
        while let Some(e) = state.client.poll_event() {
            changed = true;
            events.extend(js::event(&e));
        }
        if !changed {
            return;
        }
        state.version += 1;
        // Copies, so a callback may subscribe or unsubscribe while they run.
        (events, state.callbacks.clone())
    };
    for (topic, value) in &events {
        for (_, t, f) in &callbacks {
            if t == topic {
                call(f, value);
            }
        }
    }
    for (_, t, f) in &callbacks {
        if *t == Topic::Store {
            call(f, &JsValue::UNDEFINED);
        }
    }
}

/// After `close()`: stops the page listeners, the screen-lock watcher and the
/// timer, and forgets the app's callbacks.
pub fn release(shared: &Shared) {
    let page = {
        let Ok(mut state) = shared.try_borrow_mut() else {
            return;
        };
        state.timer = None;
        state.socket = None;
        state.callbacks.clear();
        state.page.take()
    };
    drop(page);
}

/// Calls an app callback. An exception it throws goes to `reportError`, as an
/// uncaught one would (the console, `window.onerror`, error trackers), and
/// never into the SDK, which goes on with the other callbacks.
fn call(f: &js_sys::Function, arg: &JsValue) {
    if let Err(e) = f.call1(&JsValue::NULL, arg) {
        report_error(&e);
    }
}

fn perform(shared: &Shared, state: &mut State) {
    while let Some(action) = state.client.poll_action() {
        match action {
            Action::Connect => open(shared, state),
            Action::Send(text) => {
                if let Some(s) = &state.socket {
                    // A send on a closing socket fails; the client notices the
                    // close and resends its state after reconnecting.
                    let _ = s.ws.send_with_str(&text);
                }
            }
            Action::Close(code) => {
                if let Some(s) = state.socket.take() {
                    let _ = s.ws.close_with_code(code);
                }
            }
            Action::FetchToken => ask_token(shared, state),
        }
    }
}

fn open(shared: &Shared, state: &mut State) {
    state.socket = None;
    state.generation = state.generation.wrapping_add(1);
    let generation = state.generation;
    let weak = Rc::downgrade(shared);
    // One handler for the socket's events (see `openSocket` in `browser.js`):
    // a text message, `0` when open, the close code when closed.
    let on = callback(move |e: JsValue| {
        let Some(shared) = weak.upgrade() else { return };
        let current = shared
            .try_borrow()
            .is_ok_and(|s| s.generation == generation && s.socket.is_some());
        if !current {
            return;
        }
        with(&shared, |c, now| match (e.as_string(), e.as_f64()) {
            (Some(text), _) => c.received(now, &text),
            (None, Some(0.0)) => c.opened(now),
            (None, code) => c.closed(now, code.map(|n| n as u16).filter(|&c| c != 1006)),
        });
    });
    let token = state.client.token().unwrap_or_default();
    let Some(ws) = open_socket(&state.url, token, &on) else {
        // A malformed URL: the client backs off and reports "reconnecting".
        state.client.closed(now(), None);
        return;
    };
    state.socket = Some(Socket { ws, _on: on });
}

/// Calls the app's `getToken`; its answer goes to the client.
fn ask_token(shared: &Shared, state: &mut State) {
    let Some(get) = &state.get_token else {
        state.client.token_failed(now());
        return;
    };
    let on = state.on_token.get_or_insert_with(|| {
        let weak = Rc::downgrade(shared);
        callback(move |token: JsValue| {
            if let Some(shared) = weak.upgrade() {
                with(&shared, |c, now| match token.as_string() {
                    Some(t) => c.set_token(now, t),
                    None => c.token_failed(now),
                });
            }
        })
    });
    fetch_token(get, on);
}

/// Keeps one timer armed for the client's next deadline.
fn schedule(shared: &Shared, state: &mut State, now: Millis) {
    let Some(at) = state.client.next_deadline(now) else {
        state.timer = None;
        return;
    };
    if state.timer.as_ref().is_some_and(|(t, _)| *t == at) {
        return;
    }
    let delay = at.since(now).as_millis().min(i32::MAX as u128) as u32;
    let on_timer = state.on_timer.get_or_insert_with(|| {
        let weak = Rc::downgrade(shared);
        callback(move |_| {
            if let Some(shared) = weak.upgrade() {
                if let Ok(mut s) = shared.try_borrow_mut() {
                    s.timer = None;
                }
                with(&shared, |c, now| c.tick(now));
            }
        })
    });
    state.timer = Some((at, Timer(set_timer(delay, on_timer))));
}
