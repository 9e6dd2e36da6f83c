//! Page signals: input, visibility, focus, page lifecycle and network.
//!
//! Listeners are passive and capture-phase, so the page's own handlers never
//! wait on us. Input is forwarded at most every 250 ms: the client only keeps
//! a timestamp, and an idle → active transition is forwarded at once because
//! the first event after a quiet spell always passes the throttle.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::Cell;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{EventTarget, PageTransitionEvent};

use crate::js;
use crate::runtime::{self, Shared};

const INPUT_EVENTS: [&str; 6] = [
    "pointermove",
    "pointerdown",
    "keydown",
    "wheel",
    "touchstart",
    "scroll",
];
const INPUT_THROTTLE_MS: f64 = 250.0;

/// A listener that removes itself when dropped.
pub struct Listener {
    target: EventTarget,
    kind: &'static str,
    closure: Closure<dyn FnMut(JsValue)>,
    capture: bool,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.target.remove_event_listener_with_callback_and_bool(
            self.kind,
            self.closure.as_ref().unchecked_ref(),
            self.capture,
        );
    }
}

#[wasm_bindgen(module = "/src/screen_lock.js")]
extern "C" {
    #[wasm_bindgen(js_name = watchScreenLock)]
    fn watch_screen_lock(on_lock: &Closure<dyn FnMut(JsValue)>) -> js_sys::Function;
}

/// Screen-lock watching (the `idleDetection` option); stops when dropped.
pub struct ScreenLock {
    _on_lock: Closure<dyn FnMut(JsValue)>,
    stop: js_sys::Function,
}

impl ScreenLock {
    /// Feeds screen lock and unlock to `shared`'s client (see `screen_lock.js`).
    pub fn watch(shared: &Shared) -> Self {
        let weak = Rc::downgrade(shared);
        let on_lock = runtime::callback(move |locked| {
            if let Some(s) = weak.upgrade() {
                let locked = locked.as_bool() == Some(true);
                runtime::with(&s, |c, now| c.set_locked(now, locked));
            }
        });
        let stop = watch_screen_lock(&on_lock);
        Self {
            _on_lock: on_lock,
            stop,
        }
    }
}

impl Drop for ScreenLock {
    fn drop(&mut self) {
        let _ = self.stop.call0(&JsValue::NULL);
    }
}

/// Adds a passive listener that feeds `shared`.
pub fn listen(
    target: &EventTarget,
    kind: &'static str,
    capture: bool,
    f: impl FnMut(JsValue) + 'static,
) -> Option<Listener> {
    let closure = runtime::callback(f);
    let options = js::listener_options(capture);
    target
        .add_event_listener_with_callback_and_add_event_listener_options(
            kind,
            closure.as_ref().unchecked_ref(),
            options.unchecked_ref(),
        )
        .ok()?;
    Some(Listener {
        target: target.clone(),
        kind,
        closure,
        capture,
    })
}

/// What a page listener reports. One closure type and one handler for all of
/// them: a closure per listener cost the bundle its own copy of the glue.
#[derive(Clone, Copy)]
enum Signal {
    Input,
    Visibility,
    Focus(bool),
    PageHide,
    PageShow,
    Online(bool),
}

/// Installs the page listeners; they live as long as the returned vector.
pub fn install(shared: &Shared) -> Vec<Listener> {
    let Some(window) = runtime::window() else {
        return Vec::new();
    };
    let Some(document) = window.document() else {
        return Vec::new();
    };
    let weak = Rc::downgrade(shared);
    let last_input = Rc::new(Cell::new(f64::NEG_INFINITY));
    let (w, d): (&EventTarget, &EventTarget) = (&window, &document);
    let listeners = [
        (w, INPUT_EVENTS[0], true, Signal::Input),
        (w, INPUT_EVENTS[1], true, Signal::Input),
        (w, INPUT_EVENTS[2], true, Signal::Input),
        (w, INPUT_EVENTS[3], true, Signal::Input),
        (w, INPUT_EVENTS[4], true, Signal::Input),
        (w, INPUT_EVENTS[5], true, Signal::Input),
        (d, "visibilitychange", false, Signal::Visibility),
        (w, "focus", false, Signal::Focus(true)),
        (w, "blur", false, Signal::Focus(false)),
        (w, "pagehide", false, Signal::PageHide),
        (w, "pageshow", false, Signal::PageShow),
        (w, "online", false, Signal::Online(true)),
        (w, "offline", false, Signal::Online(false)),
    ];
    let out = listeners
        .into_iter()
        .filter_map(|(target, kind, capture, signal)| {
            let (weak, last) = (weak.clone(), last_input.clone());
            listen(target, kind, capture, move |e| {
                if let Some(s) = weak.upgrade() {
                    handle(&s, signal, &e, &last);
                }
            })
        })
        .collect();
    // Starting state: a page opened in a background tab starts hidden.
    runtime::with(shared, |c, now| {
        c.set_hidden(now, document.hidden());
        if !document.has_focus().unwrap_or(true) {
            c.set_focused(now, false);
        }
    });
    out
}

fn handle(s: &Shared, signal: Signal, e: &JsValue, last_input: &Cell<f64>) {
    match signal {
        Signal::Input => {
            let t = js_sys::Date::now();
            if t - last_input.get() < INPUT_THROTTLE_MS {
                return;
            }
            last_input.set(t);
            runtime::with(s, |c, now| c.input(now));
        }
        Signal::Visibility => {
            let hidden = runtime::window()
                .and_then(|w| w.document())
                .is_some_and(|d| d.hidden());
            runtime::with(s, |c, now| c.set_hidden(now, hidden));
        }
        Signal::Focus(focused) => runtime::with(s, |c, now| c.set_focused(now, focused)),
        Signal::PageHide => {
            // Save the token before closing: the reloaded page (or this page
            // restored from the back/forward cache) resumes with it.
            if let Ok(state) = s.try_borrow() {
                state.save_resume_token();
            }
            runtime::with(s, |c, _| c.page_hide());
        }
        Signal::PageShow => {
            if !e.unchecked_ref::<PageTransitionEvent>().persisted() {
                return;
            }
            let Ok(key) = s
                .try_borrow()
                .map(|st| (!st.client.is_closed()).then(|| st.resume_key.clone()))
            else {
                return;
            };
            let Some(key) = key else {
                return; // the app closed the client: stay closed
            };
            let token = key.as_deref().and_then(runtime::take_resume_token);
            runtime::with(s, |c, now| {
                if token.is_some() {
                    c.set_resume_token(token);
                }
                c.start(now);
            });
        }
        Signal::Online(true) => runtime::with(s, |c, now| c.network_online(now)),
        Signal::Online(false) => runtime::with(s, |c, now| c.network_offline(now)),
    }
}
