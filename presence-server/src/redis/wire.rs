//! Decoding what the scripts publish. Everything from Redis is external data:
//! each entry is validated on its own (ids through their constructors, diffs
//! through serde) and a bad one is skipped, never trusted or unwrapped.
//!
//! Lua's JSON encoder writes an empty list as `{}`, so lists are read
//! leniently: anything that is not an array is empty.

use presence_core::protocol::{Diff, Receipt, ServerMessage};
use presence_core::{ConnId, Event, Millis, PresenceView, RoomId, Status, StatusText, UserId};
use serde_json::Value;

/// A user's own status change: (user, status, text).
pub(crate) type SelfStatus = (UserId, Status, Option<StatusText>);

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn self_status(v: &Value) -> Option<SelfStatus> {
    let user = UserId::new(v.get("user")?.as_str()?).ok()?;
    let status: Status = serde_json::from_value(v.get("status")?.clone()).ok()?;
    let text = match v.get("text").and_then(Value::as_str) {
        Some(t) => StatusText::new(t).ok()?,
        None => None,
    };
    Some((user, status, text))
}

fn rooms(v: &Value) -> Vec<RoomId> {
    list(v)
        .iter()
        .filter_map(|r| RoomId::new(r.as_str()?).ok())
        .collect()
}

/// A message on `{prefix}:events`: the cluster-level events and the users'
/// own status changes, in order.
pub(crate) fn events(payload: &[u8]) -> Option<(Vec<Event>, Vec<SelfStatus>)> {
    let msg: Value = serde_json::from_slice(payload).ok()?;
    let at = Millis(msg.get("at").and_then(Value::as_u64).unwrap_or(0));
    let mut events = Vec::new();
    let mut selfs = Vec::new();
    for entry in list(msg.get("e")?) {
        if let Some(d) = entry.get("d") {
            let Ok(diff) = serde_json::from_value::<Diff>(d.clone()) else {
                tracing::debug!("skipping an undecodable diff");
                continue;
            };
            events.push(Event {
                at,
                diff,
                rooms: rooms(entry.get("rooms").unwrap_or(&Value::Null)),
                global: entry.get("g").and_then(Value::as_bool).unwrap_or(false),
            });
        } else if let Some(rd) = entry.get("rd") {
            let parts = list(rd);
            let (Some(user), Some(room), Some(marker)) = (
                parts
                    .first()
                    .and_then(Value::as_str)
                    .and_then(|u| UserId::new(u).ok()),
                parts
                    .get(1)
                    .and_then(Value::as_str)
                    .and_then(|r| RoomId::new(r).ok()),
                parts
                    .get(2)
                    .and_then(Value::as_str)
                    .and_then(|m| m.parse::<u64>().ok()),
            ) else {
                continue;
            };
            events.push(Event {
                at,
                diff: Diff::Read { user, marker },
                rooms: vec![room],
                global: false,
            });
        } else if let Some(s) = entry.get("self").and_then(self_status) {
            selfs.push(s);
        }
    }
    Some((events, selfs))
}

/// Snapshots, `watching` answers and status answers, per connection.
pub(crate) type Replies = (
    Vec<(ConnId, ServerMessage)>,
    Vec<(ConnId, Vec<PresenceView>)>,
    Vec<SelfStatus>,
);

fn view_list(v: &Value) -> Vec<PresenceView> {
    list(v)
        .iter()
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect()
}

/// A message on the node's own channel.
pub(crate) fn replies(payload: &[u8]) -> Option<Replies> {
    let msg: Value = serde_json::from_slice(payload).ok()?;
    let mut snaps = Vec::new();
    for s in list(msg.get("snaps").unwrap_or(&Value::Null)) {
        let (Some(conn), Some(room)) = (
            s.get("c").and_then(Value::as_u64),
            s.get("room")
                .and_then(Value::as_str)
                .and_then(|r| RoomId::new(r).ok()),
        ) else {
            continue;
        };
        let typing = list(s.get("typing").unwrap_or(&Value::Null))
            .iter()
            .filter_map(|u| UserId::new(u.as_str()?).ok())
            .collect();
        let receipts = list(s.get("receipts").unwrap_or(&Value::Null))
            .iter()
            .filter_map(|r| {
                let parts = list(r);
                Some(Receipt {
                    user: UserId::new(parts.first()?.as_str()?).ok()?,
                    marker: parts.get(1)?.as_str()?.parse().ok()?,
                })
            })
            .collect();
        let snapshot = ServerMessage::Snapshot {
            room,
            members: view_list(s.get("members").unwrap_or(&Value::Null)),
            typing,
            receipts,
        };
        snaps.push((ConnId(conn), snapshot));
    }
    let watching = list(msg.get("watch").unwrap_or(&Value::Null))
        .iter()
        .filter_map(|w| {
            let conn = w.get("c")?.as_u64()?;
            Some((
                ConnId(conn),
                view_list(w.get("users").unwrap_or(&Value::Null)),
            ))
        })
        .collect();
    let selfs = list(msg.get("self").unwrap_or(&Value::Null))
        .iter()
        .filter_map(self_status)
        .collect();
    Some((snaps, watching, selfs))
}

/// A JSON list of views from the query script.
pub(crate) fn views(json: &str) -> Option<Vec<PresenceView>> {
    let v: Value = serde_json::from_str(json).ok()?;
    Some(view_list(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_empty_lists_and_bad_entries_are_tolerated() {
        let msg = br#"{"seq":1,"from":"a","at":5,"e":[
            {"d":{"type":"user_active","user":"ana"},"rooms":{},"g":true},
            {"d":{"type":"user_active","user":"has space"},"rooms":["r"],"g":true},
            {"rd":["ana","r","9007199254740991"]},
            {"self":{"user":"ana","status":"busy","text":"x"}}]}"#;
        let (events, selfs) = events(msg).expect("decodes");
        assert_eq!(events.len(), 2);
        assert!(events[0].rooms.is_empty() && events[0].global);
        assert_eq!(
            events[1].diff,
            Diff::Read {
                user: UserId::new("ana").expect("id"),
                marker: 9_007_199_254_740_991
            }
        );
        assert_eq!(selfs.len(), 1);
        assert!(super::events(b"not json").is_none());
    }
}
