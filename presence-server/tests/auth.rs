//! Tokens are checked at the upgrade, and a connection only ever speaks for
//! its own user.

mod common;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn upgrade_status(request: impl IntoClientRequest + Unpin) -> u16 {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("answer in time")
    {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn bad_expired_and_missing_tokens_get_401_at_upgrade() {
    let srv = TestServer::start(calm_config()).await;
    let base = format!("ws://{}/ws", srv.addr);
    assert_eq!(upgrade_status(base.clone()).await, 401, "missing");
    assert_eq!(
        upgrade_status(format!("{base}?token=not-a-jwt")).await,
        401,
        "bad"
    );
    let expired = token_exp("ana", now_secs() - 3600);
    assert_eq!(
        upgrade_status(format!("{base}?token={expired}")).await,
        401,
        "expired"
    );
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "ana", "exp": now_secs() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-of-enough-length!!")
            .expect("key"),
    )
    .expect("encodes");
    assert_eq!(
        upgrade_status(format!("{base}?token={forged}")).await,
        401,
        "forged"
    );
    assert_eq!(upgrade_status(srv.url("ana")).await, 101, "valid");
    srv.stop().await;
}

#[tokio::test]
async fn a_bearer_header_works_like_the_query_token() {
    let srv = TestServer::start(calm_config()).await;
    let mut req = format!("ws://{}/ws", srv.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("ana")).parse().expect("header"),
    );
    assert_eq!(upgrade_status(req).await, 101);
    srv.stop().await;
}

#[tokio::test]
async fn frames_naming_another_user_still_act_for_the_authenticated_one() {
    let srv = TestServer::start(calm_config()).await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    let mut mallory = srv.client("mallory").await;
    assert_eq!(mallory.welcome["user"], "mallory");
    // Extra "user" fields are unknown fields: ignored, never obeyed.
    mallory
        .send(json!({"type": "join", "room": "r", "user": "ana"}))
        .await;
    let snap = mallory.frame("snapshot").await;
    assert_eq!(names(&snap["members"]), ["bob", "mallory"]);
    bob.diff("user_connected", "mallory").await;
    mallory
        .send(json!({"type": "status", "status": "busy", "text": "pwned", "user": "bob"}))
        .await;
    let (_, d) = bob.diff("status", "mallory").await;
    assert_eq!(d["text"], "pwned");
    let (_, bob_view) = srv.get("/v1/users/bob/presence", SERVICE_KEY).await;
    assert_eq!(bob_view["status"], "available", "bob's status untouched");
    // The hello cannot switch users either.
    mallory
        .send(json!({"type": "hello", "v": 1, "user": "bob"}))
        .await;
    let e = mallory.frame("error").await;
    assert_eq!(e["code"], "already_greeted");
    srv.stop().await;
}

#[tokio::test]
async fn rooms_and_watch_claims_are_enforced_on_the_socket_and_the_http_api() {
    let srv = TestServer::start(calm_config()).await;
    let token = token_with(json!({
        "sub": "ana", "exp": now_secs() + 3600,
        "rooms": ["team-42-*"], "watch": ["bob"],
    }));
    let url = format!("ws://{}/ws?token={token}", srv.addr);
    let mut ana = Client::connect(&url, "ana", None).await;
    ana.join("team-42-design").await;
    ana.send(json!({"type": "join", "room": "general"})).await;
    let e = ana.frame("error").await;
    assert_eq!(
        (&e["code"], &e["frame"], &e["room"]),
        (&json!("forbidden"), &json!("join"), &json!("general"))
    );
    ana.send(json!({"type": "watch", "users": ["bob", "carol"]}))
        .await;
    let e = ana.frame("error").await;
    assert_eq!(
        (&e["code"], &e["users"]),
        (&json!("forbidden"), &json!(["carol"]))
    );
    assert_eq!(names(&ana.frame("watching").await["users"]), ["bob"]);
    let (status, _) = srv.get("/v1/rooms/general/members", &token).await;
    assert_eq!(status, 403);
    let (status, _) = srv.get("/v1/rooms/team-42-x/members", &token).await;
    assert_eq!(status, 200);
    let (status, _) = srv.get("/v1/users/carol/presence", &token).await;
    assert_eq!(status, 403);
    let (status, _) = srv.get("/v1/users/bob/presence", &token).await;
    assert_eq!(status, 200);
    srv.stop().await;
}

#[tokio::test]
async fn with_default_audience_none_a_token_without_claims_joins_nothing() {
    use presence_server::{DefaultAudience, JwtAuth, PresenceServer};
    let auth = JwtAuth::hs256(SECRET)
        .expect("secret")
        .default_audience(DefaultAudience::None);
    let builder = PresenceServer::builder().config(calm_config());
    let srv = TestServer::start_with_auth(builder, auth).await;
    let mut ana = srv.client("ana").await;
    ana.send(json!({"type": "join", "room": "general"})).await;
    assert_eq!(ana.frame("error").await["code"], "forbidden");
    let scoped = token_with(json!({"sub": "bob", "exp": now_secs() + 3600, "rooms": ["general"]}));
    let url = format!("ws://{}/ws?token={scoped}", srv.addr);
    let mut bob = Client::connect(&url, "bob", None).await;
    assert_eq!(names(&bob.join("general").await["members"]), ["bob"]);
    // One entry over the bound (the unit tests try 10,000), in a header.
    let huge: Vec<String> = (0..1001).map(|i| format!("r{i}")).collect();
    let bad = token_with(json!({"sub": "eve", "exp": now_secs() + 3600, "rooms": huge}));
    let mut req = format!("ws://{}/ws", srv.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {bad}").parse().expect("header"),
    );
    assert_eq!(upgrade_status(req).await, 401);
    srv.stop().await;
}
