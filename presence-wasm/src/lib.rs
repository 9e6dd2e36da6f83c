//! Browser SDK for presence-rs.
//!
//! A thin WebAssembly face over `presence-core`: the core's sans-I/O
//! `Client` decides (idleness, heartbeats, reconnects, resume, typing
//! throttle, the room cache); this crate wires it to the browser.
//!
//! Layout: `lib.rs` is the JS API (`PresenceClient`; `client.js` defines
//! its methods over one entry point), `js.rs` the JS shapes and TypeScript
//! types, `runtime.rs` the socket, timer and callback glue, `page.rs` the page
//! signals; `browser.js` makes the DOM, socket and storage calls for both.
//! Built into an npm package by `cargo xtask npm`.
//! The crate also builds natively so clippy and `cargo test --workspace`
//! cover it; its behaviour is tested in headless Chromium (`tests/`).

#![forbid(unsafe_code)]
#![no_std]

extern crate alloc;

/// lol_alloc's free list instead of Rust's default dlmalloc (and of talc,
/// which replaced it first): the same job in a fraction of the bytes
/// (README, "Size"). First fit over a list of free blocks kept in address
/// order and merged with their neighbours, so a call costs O(free blocks):
/// the client's heap is small (at most 64 rooms, large rooms as summaries).
/// The spin lock is the safe way to declare it; in a module without threads
/// it is never contended.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: lol_alloc::LockedAllocator<lol_alloc::FreeListAllocator> =
    lol_alloc::LockedAllocator::new(lol_alloc::FreeListAllocator::new());

/// Without `std` (the npm bundle) a panic, which no input can cause, traps
/// instead of carrying formatting code for a message nobody would read.
#[cfg(all(target_arch = "wasm32", not(feature = "std")))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

mod js;
mod page;
mod runtime;

use alloc::rc::Rc;
use alloc::string::String;
use core::cell::RefCell;
use core::time::Duration;

use presence_core::client::{ActivityConfig, Client, ClientConfig};
use presence_core::{InvalidObject, JsonObject, LastSeen, Receipts, Status, StatusText};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::js::{
    ConnectOptions, ConnectionCallback, ErrorCallback, JsConnectOptions, JsSnapshot, JsStatus,
    PresenceCallback, PresenceList, ReceiptCallback, SelfStatusCallback, Topic, TypingCallback,
    Unsubscribe, UserList, error,
};
use crate::runtime::{Shared, State};

/// The wire protocol version this SDK speaks.
#[wasm_bindgen(js_name = protocolVersion)]
pub fn protocol_version() -> u32 {
    presence_core::PROTOCOL_VERSION
}

/// A live presence connection for this page.
///
/// `close()`, `free()` and `[Symbol.dispose]` (`using`) all end it the same
/// way: `leaving`, the socket closed, listeners removed, never reconnected;
/// any later call but `getSnapshot` throws an `Error` with `code: "closed"`.
//
// wasm-bindgen's own `free` would drop the Rust object with the socket still
// open and turn every later call into "null pointer passed to rust". The
// `free` below replaces it (in a JS class body the later method wins, and
// `[Symbol.dispose]` is wired to `prototype.free`), so the small object stays
// until garbage collection, whose finalizer drops it (and `Drop` closes).
#[wasm_bindgen(skip_typescript)]
pub struct PresenceClient {
    shared: Shared,
}

impl Drop for PresenceClient {
    /// Garbage-collected without `close()`: still say `leaving`.
    fn drop(&mut self) {
        self.close();
    }
}

/// The JS face: `connect`, `free` and one entry point for every other
/// method. `src/client.js` defines the methods on the class, each calling
/// `c(op, a, b)` with its index in `METHODS` there (the order of [`Op`]):
/// an export per method cost the bundle a wasm-bindgen shim and glue each
/// (0.9 KB gzipped in all). The class's types are in `js.rs`.
#[wasm_bindgen]
impl PresenceClient {
    /// `PresenceClient.connect(options)`: [`PresenceClient::connect`], as
    /// the JS object with its methods.
    #[wasm_bindgen(js_name = connect, skip_typescript)]
    pub fn connect_js(options: JsConnectOptions) -> Result<JsValue, JsValue> {
        Ok(Self::connect(options)?.into_js())
    }

    /// The one entry point of the methods `src/client.js` defines.
    #[wasm_bindgen(js_name = c, skip_typescript)]
    pub fn call(&self, op: u32, a: JsValue, b: JsValue) -> Result<JsValue, JsValue> {
        let done = |r: Result<(), JsValue>| r.map(|()| JsValue::UNDEFINED);
        let room = || js::string(&a, "room");
        let sub = |t, cb: JsValue| self.subscribe_to(t, cb.unchecked_into()).map(JsValue::from);
        match Op::ALL.get(op as usize).copied() {
            Some(Op::Join) => done(self.join(&room()?)),
            Some(Op::Leave) => done(self.leave(&room()?)),
            Some(Op::Watch) => done(self.watch(a.unchecked_into())),
            Some(Op::Unwatch) => done(self.unwatch(a.unchecked_into())),
            Some(Op::SetStatus) => {
                let text = match b.is_null_or_undefined() {
                    true => None,
                    false => Some(js::string(&b, "text")?),
                };
                done(self.set_status(a.unchecked_into(), text))
            }
            Some(Op::Typing) => done(self.typing(&room()?)),
            Some(Op::StopTyping) => done(self.stop_typing(&room()?)),
            Some(Op::BindTyping) => Ok(self.bind_typing(&room()?, b.unchecked_ref())?.into()),
            Some(Op::MarkRead) => done(self.mark_read(&room()?, b.as_f64().unwrap_or(f64::NAN))),
            Some(Op::Members) => Ok(self.members(&room()?)?.into()),
            Some(Op::OnPresence) => sub(Topic::Presence, a),
            Some(Op::OnTyping) => sub(Topic::Typing, a),
            Some(Op::OnReceipt) => sub(Topic::Receipt, a),
            Some(Op::OnConnection) => sub(Topic::Connection, a),
            Some(Op::OnSelfStatus) => sub(Topic::SelfStatus, a),
            Some(Op::OnError) => sub(Topic::Error, a),
            Some(Op::Subscribe) => sub(Topic::Store, a),
            Some(Op::GetSnapshot) => Ok(self.get_snapshot().into()),
            Some(Op::Close) => {
                self.close();
                Ok(JsValue::UNDEFINED)
            }
            Some(Op::SetToken) => done(self.set_token(&js::string(&a, "token")?)),
            Some(Op::SetData) => done(self.set_data(&a)),
            Some(Op::View) => done(self.view(&a)),
            Some(Op::SetPrivacy) => done(self.set_privacy(&a, &b)),
            None => Ok(JsValue::UNDEFINED),
        }
    }

    /// The same as `close()` (and `[Symbol.dispose]`, for `using`).
    #[wasm_bindgen(js_name = free, skip_typescript)]
    pub fn dispose(&self) {
        self.close();
    }
}

/// The methods behind [`PresenceClient::call`], in the order of `METHODS`
/// in `src/client.js` (a native test checks that the two agree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Join,
    Leave,
    Watch,
    Unwatch,
    SetStatus,
    Typing,
    StopTyping,
    BindTyping,
    MarkRead,
    Members,
    OnPresence,
    OnTyping,
    OnReceipt,
    OnConnection,
    OnSelfStatus,
    OnError,
    Subscribe,
    GetSnapshot,
    Close,
    SetToken,
    SetData,
    View,
    SetPrivacy,
}

impl Op {
    const ALL: [Op; 23] = [
        Op::Join,
        Op::Leave,
        Op::Watch,
        Op::Unwatch,
        Op::SetStatus,
        Op::Typing,
        Op::StopTyping,
        Op::BindTyping,
        Op::MarkRead,
        Op::Members,
        Op::OnPresence,
        Op::OnTyping,
        Op::OnReceipt,
        Op::OnConnection,
        Op::OnSelfStatus,
        Op::OnError,
        Op::Subscribe,
        Op::GetSnapshot,
        Op::Close,
        Op::SetToken,
        Op::SetData,
        Op::View,
        Op::SetPrivacy,
    ];
}

#[wasm_bindgen(module = "/src/client.js")]
extern "C" {
    #[wasm_bindgen(js_name = defineMethods)]
    fn define_methods(client: &JsValue);
}

/// The Rust API, which the browser tests call directly; JS reaches it through
/// [`PresenceClient::call`].
impl PresenceClient {
    /// The JS object apps hold, with its methods (`src/client.js`).
    pub fn into_js(self) -> JsValue {
        let v = JsValue::from(self);
        define_methods(&v);
        v
    }

    /// Connects to the server and starts watching this page's activity.
    /// Throws an `Error` with `code: "invalid_options"` for bad options.
    pub fn connect(options: JsConnectOptions) -> Result<PresenceClient, JsValue> {
        let o = ConnectOptions::read(&options.into())?;
        if !(o.url.starts_with("ws://") || o.url.starts_with("wss://")) {
            return Err(error(
                "invalid_options",
                "url must start with ws:// or wss://",
            ));
        }
        let now = runtime::now();
        let defaults = ActivityConfig::default();
        let ms = |v: Option<u32>, d: Duration| v.map_or(d, |v| Duration::from_millis(v.into()));
        let config = ClientConfig {
            activity: ActivityConfig {
                idle_after: ms(o.idle_after_ms, defaults.idle_after),
                hidden_after: ms(o.hidden_after_ms, defaults.hidden_after),
                blurred_after: ms(o.blurred_after_ms, defaults.blurred_after),
            },
            idle_after_from_server: o.idle_after_ms.is_none(),
            token_source: o.get_token.is_some(),
            device: Some(o.device),
            seed: (js_sys::Math::random() * 9.007_199_254_740_991e15) as u64,
            ..ClientConfig::default()
        };
        let mut client = Client::new(now, config);
        if let Some(token) = o.token {
            client.set_token(now, token);
        }
        let resume_key = o.resume.then(|| js::cat("presence:resume:", &o.url));
        if let Some(key) = &resume_key {
            client.set_resume_token(runtime::take_resume_token(key));
        }
        let shared: Shared = Rc::new(RefCell::new(State::new(
            client,
            o.url,
            o.get_token,
            resume_key,
        )));
        let listeners = page::install(&shared);
        let screen_lock = o.idle_detection.then(|| page::watch_lock(&shared));
        if let Ok(mut state) = shared.try_borrow_mut() {
            state.page = Some((listeners, screen_lock));
        }
        runtime::with(&shared, |c, now| c.start(now));
        Ok(PresenceClient { shared })
    }

    /// Throws `closed` once the app closed (or freed) this client. Not
    /// inlined: every method calls it.
    #[inline(never)]
    fn live(&self) -> Result<(), JsValue> {
        if self
            .shared
            .try_borrow()
            .is_ok_and(|s| !s.client.is_closed())
        {
            Ok(())
        } else {
            Err(error("closed", "the client is closed"))
        }
    }

    /// Joins a room: its members' presence arrives as `onPresence` events.
    /// Throws `too_many_rooms` beyond 64; a refusal by the server comes to
    /// `onError` with `frame: "join"` and the `room`, and the room is then
    /// no longer joined.
    pub fn join(&self, room: &str) -> Result<(), JsValue> {
        self.live()?;
        let room = js::room(room)?;
        let mut result = Ok(());
        runtime::with(&self.shared, |c, _| result = c.try_join(room));
        result.map_err(js::client_error)
    }

    /// Leaves a room.
    pub fn leave(&self, room: &str) -> Result<(), JsValue> {
        self.live()?;
        let room = js::room(room)?;
        runtime::with(&self.shared, |c, _| c.leave(&room));
        Ok(())
    }

    /// Watches users wherever they are (a contact list).
    pub fn watch(&self, users: UserList) -> Result<(), JsValue> {
        self.live()?;
        let users = js::users(&users)?;
        let mut result = Ok(());
        runtime::with(&self.shared, |c, _| result = c.watch(users));
        result.map_err(js::client_error)
    }

    /// Stops watching users.
    pub fn unwatch(&self, users: UserList) -> Result<(), JsValue> {
        self.live()?;
        let users = js::users(&users)?;
        runtime::with(&self.shared, |c, _| c.unwatch(users));
        Ok(())
    }

    /// Sets the user's status (`available`, `away`, `busy`, `invisible`) and
    /// an optional short text, for all their tabs and devices.
    pub fn set_status(&self, status: JsStatus, text: Option<String>) -> Result<(), JsValue> {
        self.live()?;
        let status: Status = js::status(&status.into())?;
        let text = match text {
            Some(t) => StatusText::new(&t).map_err(js::text_error)?,
            None => None,
        };
        runtime::with(&self.shared, |c, _| c.set_status(status, text));
        Ok(())
    }

    /// The user typed in a room's composer (call on every input; throttled).
    pub fn typing(&self, room: &str) -> Result<(), JsValue> {
        self.live()?;
        let room = js::room(room)?;
        let mut result = Ok(());
        runtime::with(&self.shared, |c, now| result = c.typing(now, &room));
        result.map_err(js::client_error)
    }

    /// The user stopped typing (composer blurred, message sent).
    pub fn stop_typing(&self, room: &str) -> Result<(), JsValue> {
        self.live()?;
        let room = js::room(room)?;
        runtime::with(&self.shared, |c, _| c.stop_typing(&room));
        Ok(())
    }

    /// Binds typing to an `<input>` or `<textarea>`: input starts or refreshes
    /// it, blur stops it. Returns a function that unbinds.
    pub fn bind_typing(
        &self,
        room: &str,
        element: &web_sys::EventTarget,
    ) -> Result<Unsubscribe, JsValue> {
        self.live()?;
        let room = js::room(room)?;
        let mut held = Some(page::watch_typing_in(&self.shared, room, element));
        let unbind = runtime::callback(move |_| drop(held.take()));
        Ok(unbind.into_js_value().unchecked_into())
    }

    /// The user read `room` up to `marker` (a message sequence number).
    pub fn mark_read(&self, room: &str, marker: f64) -> Result<(), JsValue> {
        self.live()?;
        let room = js::room(room)?;
        if !(marker >= 0.0
            && marker <= presence_core::limits::MAX_READ_MARKER as f64
            && marker == (marker as u64) as f64)
        {
            return Err(error(
                "invalid_marker",
                "marker must be a non-negative safe integer",
            ));
        }
        let mut result = Ok(());
        runtime::with(&self.shared, |c, _| {
            result = c.mark_read(&room, marker as u64)
        });
        result.map_err(js::client_error)
    }

    /// A room's members as last heard (empty until its snapshot arrives).
    pub fn members(&self, room: &str) -> Result<PresenceList, JsValue> {
        self.live()?;
        let room = js::room(room)?;
        let state = self.shared.borrow();
        let list = match state.client.cache().room(&room) {
            Some(r) => js::presence_list(r.members.values()),
            None => js_sys::Array::new().into(),
        };
        Ok(list.unchecked_into())
    }

    /// Presence changes in joined rooms and of watched users.
    pub fn on_presence(&self, cb: PresenceCallback) -> Result<Unsubscribe, JsValue> {
        self.subscribe_to(Topic::Presence, cb.unchecked_into())
    }

    /// Typing started or stopped in joined rooms.
    pub fn on_typing(&self, cb: TypingCallback) -> Result<Unsubscribe, JsValue> {
        self.subscribe_to(Topic::Typing, cb.unchecked_into())
    }

    /// Read markers moved in joined rooms.
    pub fn on_receipt(&self, cb: ReceiptCallback) -> Result<Unsubscribe, JsValue> {
        self.subscribe_to(Topic::Receipt, cb.unchecked_into())
    }

    /// Connection state changes.
    pub fn on_connection(&self, cb: ConnectionCallback) -> Result<Unsubscribe, JsValue> {
        self.subscribe_to(Topic::Connection, cb.unchecked_into())
    }

    /// The user's own status changed (from this or another tab or device).
    pub fn on_self_status(&self, cb: SelfStatusCallback) -> Result<Unsubscribe, JsValue> {
        self.subscribe_to(Topic::SelfStatus, cb.unchecked_into())
    }

    /// Errors the server reported, with stable codes.
    pub fn on_error(&self, cb: ErrorCallback) -> Result<Unsubscribe, JsValue> {
        self.subscribe_to(Topic::Error, cb.unchecked_into())
    }

    /// `useSyncExternalStore`'s `subscribe`: calls `cb` after any change.
    pub fn subscribe(&self, cb: js_sys::Function) -> Result<Unsubscribe, JsValue> {
        self.subscribe_to(Topic::Store, cb)
    }

    /// `useSyncExternalStore`'s `getSnapshot`: the same object until
    /// something changes. Still answers after `close()` (React may read it
    /// while unmounting): the last state, `connection: "closed"`, stale.
    pub fn get_snapshot(&self) -> JsSnapshot {
        let mut state = self.shared.borrow_mut();
        if let Some((v, snap)) = &state.snapshot
            && *v == state.version
        {
            return snap.clone().unchecked_into();
        }
        let snap = js::snapshot(&state.client);
        state.snapshot = Some((state.version, snap.clone()));
        snap.unchecked_into()
    }

    /// A fresh token from the app: used for the next socket, sent to the
    /// server on a live one, and it restarts a client stopped as
    /// `unauthorized`.
    pub fn set_token(&self, token: &str) -> Result<(), JsValue> {
        self.live()?;
        if token.is_empty() {
            return Err(error(
                "invalid_argument",
                "token must be a non-empty string",
            ));
        }
        runtime::with(&self.shared, |c, now| c.set_token(now, token.into()));
        Ok(())
    }

    /// Sets the user's presence data (a plain object; `null` clears it).
    pub fn set_data(&self, data: &JsValue) -> Result<(), JsValue> {
        self.live()?;
        let data = if data.is_null_or_undefined() {
            None
        } else {
            let bad = || {
                error(
                    "invalid_argument",
                    "data must be a plain JSON object or null",
                )
            };
            if !data.is_object() || js_sys::Array::is_array(data) {
                return Err(bad());
            }
            let text = js::json_of(data).ok_or_else(bad)?;
            // Room for the frame around it within the frame limit.
            let max = presence_core::limits::MAX_FRAME_BYTES - 32;
            Some(JsonObject::parse(&text, max).map_err(|e| match e {
                InvalidObject::TooLarge => {
                    error("data_too_large", "data must be under 4 KB of JSON")
                }
                _ => bad(),
            })?)
        };
        runtime::with(&self.shared, |c, _| c.set_data(data));
        Ok(())
    }

    /// The joined room this page shows, or none (`null`), for the app's
    /// backend deciding whether to push (PROTOCOL.md, "Devices and
    /// notifications"). Throws `not_in_room` for a room not joined; leaving
    /// the room views none; restored after every reconnect.
    pub fn view(&self, room: &JsValue) -> Result<(), JsValue> {
        self.live()?;
        let room = match room.is_null_or_undefined() {
            true => None,
            false => Some(js::room(&js::string(room, "room")?)?),
        };
        let mut result = Ok(());
        runtime::with(&self.shared, |c, _| result = c.view(room));
        result.map_err(js::client_error)
    }

    /// `setPrivacy({lastSeen?, receipts?})`: changes the user's privacy
    /// settings for all their tabs and devices; an absent one is kept.
    ///
    /// `src/client.js` hands over the object's two fields (`undefined` when
    /// absent), so reading them costs the bundle nothing here.
    pub fn set_privacy(&self, last_seen: &JsValue, receipts: &JsValue) -> Result<(), JsValue> {
        self.live()?;
        // Neither (an empty object, or no object) is refused like a bad one.
        let (last_seen, receipts) = match (
            js::setting(last_seen, LastSeen::parse)?,
            js::setting(receipts, Receipts::parse)?,
        ) {
            (None, None) => return Err(js::bad_privacy()),
            both => both,
        };
        runtime::with(&self.shared, |c, _| c.set_privacy(last_seen, receipts));
        Ok(())
    }

    /// Says `leaving`, closes the socket and stops all listeners and
    /// timers, for good. Calling it again does nothing; any other method
    /// but `getSnapshot` then throws `closed`.
    pub fn close(&self) {
        runtime::with(&self.shared, |c, _| c.close());
        runtime::release(&self.shared);
    }

    fn subscribe_to(&self, topic: Topic, f: js_sys::Function) -> Result<Unsubscribe, JsValue> {
        self.live()?;
        let id = self.shared.borrow_mut().on(topic, f);
        Ok(self.unsubscriber(id))
    }

    fn unsubscriber(&self, id: u32) -> Unsubscribe {
        let weak = Rc::downgrade(&self.shared);
        let off = runtime::callback(move |_| {
            if let Some(s) = weak.upgrade()
                && let Ok(mut s) = s.try_borrow_mut()
            {
                s.off(id);
            }
        });
        off.into_js_value().unchecked_into()
    }
}

#[cfg(test)]
mod tests {
    use super::Op;

    /// `src/client.js` calls `c(op, …)` with each method's index in its `METHODS`.
    #[test]
    fn the_js_method_list_is_in_the_order_of_op() {
        let js = include_str!("client.js");
        let list = &js[js.find("const METHODS = [").expect("METHODS")..];
        let list = &list[..list.find("];").expect("end of METHODS")];
        let names: alloc::vec::Vec<&str> = list.split('"').skip(1).step_by(2).collect();
        assert_eq!(names.len(), Op::ALL.len());
        for (op, name) in Op::ALL.iter().zip(names) {
            let mut rust = alloc::format!("{op:?}");
            rust[..1].make_ascii_lowercase();
            assert_eq!(rust, name);
        }
    }
}
