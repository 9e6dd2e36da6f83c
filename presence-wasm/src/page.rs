//! Page signals: input, visibility, focus, page lifecycle and network, and
//! typing bound to an element.
//!
//! The listeners themselves are in `browser.js` (passive, input throttled to
//! one call into wasm per 250 ms: the client only keeps a timestamp, and an
//! idle → active transition is forwarded at once because the first event
//! after a quiet spell always passes the throttle); each reports here through
//! one callback with a number.

use alloc::rc::Rc;

use wasm_bindgen::prelude::*;
use web_sys::EventTarget;

use crate::runtime::{self, Shared};

#[wasm_bindgen(module = "/src/screen_lock.js")]
extern "C" {
    #[wasm_bindgen(js_name = watchScreenLock)]
    fn watch_screen_lock(on_lock: &Closure<dyn FnMut(JsValue)>) -> js_sys::Function;
}

#[wasm_bindgen(module = "/src/browser.js")]
extern "C" {
    #[wasm_bindgen(js_name = watchPage)]
    fn watch_page(on: &Closure<dyn FnMut(JsValue)>) -> js_sys::Function;
    #[wasm_bindgen(js_name = watchTyping)]
    fn watch_typing(element: &EventTarget, on: &Closure<dyn FnMut(JsValue)>) -> js_sys::Function;
}

/// JS listeners feeding one callback; removed when dropped.
pub struct Watch {
    _on: Closure<dyn FnMut(JsValue)>,
    stop: js_sys::Function,
}

impl Watch {
    fn new(
        f: impl FnMut(JsValue) + 'static,
        start: impl FnOnce(&Closure<dyn FnMut(JsValue)>) -> js_sys::Function,
    ) -> Self {
        let on = runtime::callback(f);
        let stop = start(&on);
        Self { _on: on, stop }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.stop.call0(&JsValue::NULL);
    }
}

/// Feeds screen lock and unlock to `shared`'s client (the `idleDetection`
/// option; see `screen_lock.js`).
pub fn watch_lock(shared: &Shared) -> Watch {
    let weak = Rc::downgrade(shared);
    Watch::new(
        move |locked| {
            if let Some(s) = weak.upgrade() {
                let locked = locked.as_bool() == Some(true);
                runtime::with(&s, |c, now| c.set_locked(now, locked));
            }
        },
        watch_screen_lock,
    )
}

/// Typing in `element` for `room`: input starts or refreshes it, blur stops it.
pub fn watch_typing_in(
    shared: &Shared,
    room: presence_core::RoomId,
    element: &EventTarget,
) -> Watch {
    let weak = Rc::downgrade(shared);
    Watch::new(
        move |input| {
            if let Some(s) = weak.upgrade() {
                runtime::with(&s, |c, now| {
                    if input.as_bool() == Some(true) {
                        let _ = c.typing(now, &room);
                    } else {
                        c.stop_typing(&room);
                    }
                });
            }
        },
        |on| watch_typing(element, on),
    )
}

/// Installs the page listeners (and reports the starting state: a page
/// opened in a background tab starts hidden); they live as long as the
/// returned watch.
pub fn install(shared: &Shared) -> Watch {
    let weak = Rc::downgrade(shared);
    Watch::new(
        move |signal| {
            if let Some(s) = weak.upgrade() {
                handle(&s, signal.as_f64().unwrap_or(-1.0) as i32);
            }
        },
        watch_page,
    )
}

/// A signal numbered as in `watchPage` (`browser.js`).
fn handle(s: &Shared, signal: i32) {
    match signal {
        0 => runtime::with(s, |c, now| c.input(now)),
        1 | 2 => runtime::with(s, |c, now| c.set_hidden(now, signal == 1)),
        3 | 4 => runtime::with(s, |c, now| c.set_focused(now, signal == 3)),
        5 => {
            // Save the token before closing: the reloaded page (or this page
            // restored from the back/forward cache) resumes with it.
            if let Ok(state) = s.try_borrow() {
                state.save_resume_token();
            }
            runtime::with(s, |c, _| c.page_hide());
        }
        6 => {
            // `pageshow` from the back/forward cache.
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
        7 => runtime::with(s, |c, now| c.network_online(now)),
        8 => runtime::with(s, |c, now| c.network_offline(now)),
        _ => {}
    }
}
