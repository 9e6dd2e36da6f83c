//! The core client at volume inside the browser's wasm, with this crate's
//! allocator (lol_alloc's free list, lib.rs): 64 joined rooms of 300
//! members each, then 20,000 diff frames, the cache checked at the end.
//! It prints how long that took; the figure in the README ("Size") comes
//! from `cargo test --release -p presence-wasm --target
//! wasm32-unknown-unknown --test volume` (best of `ROUNDS`).
#![cfg(target_arch = "wasm32")]

use presence_core::client::{Client, ClientConfig};
use presence_core::{Millis, RoomId, Status, UserId};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const ROOMS: u64 = 64;
const MEMBERS: u64 = 300;
const DIFFS: u64 = 20_000;
const ROUNDS: usize = 3;

fn filled_and_changed() -> Client {
    let t0 = Millis(2_000_000);
    let mut c = Client::new(t0, ClientConfig::default());
    c.start(t0);
    c.opened(t0);
    c.received(
        t0,
        r#"{"type":"welcome","v":1,"user":"me","conn":1,"resume":"tok","resumed":false,"heartbeat_ms":10000,"idle_after_ms":30000,"status":"available"}"#,
    );
    for r in 0..ROOMS {
        c.join(RoomId::new(format!("r{r}")).expect("a room id"));
    }
    while c.poll_action().is_some() {}
    for r in 0..ROOMS {
        let members: Vec<String> = (0..MEMBERS)
            .map(|i| {
                format!(
                    r#"{{"user":"user-{i}","state":"active","status":"available","text":"hello {i}","last_active":1764338400000}}"#
                )
            })
            .collect();
        let snapshot = format!(
            r#"{{"type":"snapshot","room":"r{r}","members":[{}],"typing":[],"receipts":[]}}"#,
            members.join(",")
        );
        c.received(t0, &snapshot);
    }
    for k in 0..DIFFS {
        let (r, i) = (k % ROOMS, (k * 7) % MEMBERS);
        let diffs = format!(
            r#"{{"type":"diffs","room":"r{r}","diffs":[{{"type":"status","user":"user-{i}","status":"away","text":"t{k}"}},{{"type":"read","user":"user-{i}","marker":{k}}}]}}"#
        );
        c.received(t0, &diffs);
        while c.poll_event().is_some() {}
    }
    c
}

#[wasm_bindgen_test]
fn sixty_four_rooms_of_three_hundred_take_twenty_thousand_diffs() {
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let start = js_sys::Date::now();
        let c = filled_and_changed();
        best = best.min(js_sys::Date::now() - start);
        let rooms = c.cache().rooms();
        assert_eq!(rooms.len() as u64, ROOMS);
        assert!(rooms.values().all(|r| r.members.len() as u64 == MEMBERS));
        // The last diff: k = 19,999 in room 19,999 % 64 = 31, user 19,999 * 7 % 300 = 193.
        let last = c
            .cache()
            .room(&RoomId::new("r31").expect("a room id"))
            .expect("joined");
        let who = UserId::new("user-193").expect("a user id");
        let view = last.members.get(&who).expect("a member");
        assert_eq!(view.status, Status::Away);
        assert_eq!(view.text.as_ref().map(|t| t.as_str()), Some("t19999"));
        assert_eq!(last.receipts.get(&who), Some(&19_999));
    }
    console_log!(
        "{ROOMS} rooms of {MEMBERS} members, {DIFFS} diff frames: best of {ROUNDS} {best} ms"
    );
}
