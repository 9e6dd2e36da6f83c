//! The golden vectors in `vectors/v1.json` are the protocol's contract: every
//! message type has one, each decodes and re-encodes to itself, and each
//! appears verbatim in PROTOCOL.md. The server's and the browser SDK's tests
//! read the same file.

use std::collections::BTreeSet;

use presence_core::protocol::{
    ClientMessage, Diff, ServerMessage, decode_client, decode_server, encode,
};
use serde_json::Value;

const VECTORS: &str = include_str!("../vectors/v1.json");
const PROTOCOL_MD: &str = include_str!("../../PROTOCOL.md");

fn vectors(side: &str) -> Vec<(String, Value)> {
    let all: Value = serde_json::from_str(VECTORS).expect("vectors/v1.json is JSON");
    all[side]
        .as_array()
        .expect("an array per side")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().expect("a name").to_owned(),
                v["json"].clone(),
            )
        })
        .collect()
}

#[test]
fn client_vectors_round_trip_and_cover_every_message() {
    let mut kinds = BTreeSet::new();
    for (name, json) in vectors("client") {
        let text = json.to_string();
        let msg: ClientMessage = decode_client(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        kinds.insert(msg.kind());
        let back: Value = serde_json::from_str(&encode(&msg)).unwrap();
        assert_eq!(back, json, "{name} re-encodes to itself");
        assert!(
            PROTOCOL_MD.contains(&encode(&msg)),
            "PROTOCOL.md shows {name}: {}",
            encode(&msg)
        );
    }
    let all = [
        "hello", "join", "leave", "watch", "unwatch", "activity", "status", "typing", "read",
        "view", "privacy", "data", "auth", "ping", "leaving",
    ];
    assert_eq!(
        kinds,
        all.into_iter().collect(),
        "one vector per client message"
    );
}

#[test]
fn server_vectors_round_trip_and_cover_every_message_and_diff() {
    let mut kinds = BTreeSet::new();
    let mut diffs = BTreeSet::new();
    for (name, json) in vectors("server") {
        let text = json.to_string();
        let msg: ServerMessage = decode_server(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let derived: ServerMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(
            msg, derived,
            "{name}: the hand decoder agrees with serde's derive"
        );
        kinds.insert(json["type"].as_str().unwrap().to_owned());
        if let ServerMessage::Diffs { diffs: d, .. } = &msg {
            for diff in d {
                let wire: Value = serde_json::to_value(diff).unwrap();
                assert_eq!(wire["type"], diff.name(), "Diff::name is the wire name");
            }
            diffs.extend(d.iter().map(Diff::name));
        }
        let back: Value = serde_json::from_str(&encode(&msg)).unwrap();
        assert_eq!(back, json, "{name} re-encodes to itself");
        assert!(
            PROTOCOL_MD.contains(&encode(&msg)),
            "PROTOCOL.md shows {name}: {}",
            encode(&msg)
        );
    }
    let all = [
        "welcome",
        "snapshot",
        "summary",
        "diffs",
        "watching",
        "self_status",
        "self_privacy",
        "error",
        "auth_ok",
        "pong",
    ];
    assert_eq!(kinds, all.into_iter().map(String::from).collect());
    assert_eq!(diffs.len(), 10, "one example per diff kind, got {diffs:?}");
}

#[test]
fn every_error_code_is_documented() {
    for code in presence_core::protocol::ErrorCode::ALL {
        assert!(
            PROTOCOL_MD.contains(&format!("`{}`", code.as_str())),
            "{code:?} in PROTOCOL.md"
        );
    }
}
