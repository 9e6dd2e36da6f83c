//! Tokens are checked at the upgrade and refreshed with `auth` before they
//! expire, and a connection only ever speaks for its own user.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use presence_server::presence_core::Millis;
use presence_server::{Clock, JwtAuth, ManualClock, PresenceServer, ServerConfig};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
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

/// How the server answers a socket presenting this request: `"open"` when
/// it waits for `hello` (the token is good), else the error code and the
/// close code it sends at once, e.g. `"unauthorized 4101"`.
async fn answer(request: impl IntoClientRequest + Unpin) -> String {
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("answer in time")
        .expect("upgraded: browsers cannot read a refused upgrade's status");
    assert_eq!(resp.status().as_u16(), 101);
    let mut c = Client::raw(ws, "probe");
    match c.next_within(Duration::from_millis(300)).await {
        None => "open".into(),
        Some(e) => {
            assert_eq!(e["type"], "error", "{e}");
            format!(
                "{} {}",
                e["code"].as_str().unwrap_or("?"),
                c.close_code().await
            )
        }
    }
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("encodes")
}

#[tokio::test]
async fn every_bad_token_gets_unauthorized_and_4101_after_the_upgrade() {
    let srv = TestServer::start(calm_config()).await;
    let base = format!("ws://{}/ws", srv.addr);
    let exp = now_secs() + 3600;
    let forged = EncodingKey::from_secret(b"some-other-secret-of-enough-length!!").expect("key");
    let rsa = EncodingKey::from_rsa_pem(include_bytes!("keys/rsa-private.pem")).expect("key");
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(json!({"sub": "ana", "exp": exp}).to_string())
    );
    let rooms: Vec<String> = (0..10_000).map(|i| format!("r{i}")).collect();
    let cases = [
        ("missing", String::new()),
        ("not a JWT", "not-a-jwt".into()),
        ("expired", token_exp("ana", now_secs() - 3600)),
        ("no exp", token_with(json!({"sub": "ana"}))),
        (
            "nbf in the future",
            token_with(json!({"sub": "ana", "exp": exp, "nbf": exp - 60})),
        ),
        (
            "forged",
            sign(Algorithm::HS256, &forged, json!({"sub": "ana", "exp": exp})),
        ),
        ("alg none", none),
        (
            "RS256 for an HS256 key",
            sign(Algorithm::RS256, &rsa, json!({"sub": "ana", "exp": exp})),
        ),
        (
            "sub over 128 bytes",
            token_with(json!({"sub": "a".repeat(129), "exp": exp})),
        ),
        (
            "sub with a control character",
            token_with(json!({"sub": "an\u{7}a", "exp": exp})),
        ),
        (
            "rooms not a list",
            token_with(json!({"sub": "ana", "exp": exp, "rooms": "general"})),
        ),
        (
            "rooms with 10,000 entries",
            token_with(json!({"sub": "ana", "exp": exp, "rooms": rooms})),
        ),
    ];
    for (what, token) in cases {
        // In a header: 10,000 rooms do not fit in a URL.
        let mut req = base.as_str().into_client_request().expect("request");
        if !token.is_empty() {
            let bearer = format!("Bearer {token}").parse().expect("header");
            req.headers_mut().insert("authorization", bearer);
        }
        assert_eq!(answer(req).await, "unauthorized 4101", "{what}");
    }
    assert_eq!(answer(srv.url("ana")).await, "open", "valid");
    let (_, metrics) = http_text(srv.addr, "/metrics").await;
    assert!(
        metrics.contains("presence_unauthorized_upgrades_total 12"),
        "{metrics}"
    );
    srv.finish().await;
}

#[tokio::test]
async fn every_algorithm_verifies_over_the_socket() {
    let rsa = EncodingKey::from_rsa_pem(include_bytes!("keys/rsa-private.pem")).expect("key");
    let ec = EncodingKey::from_ec_pem(include_bytes!("keys/ec-private.pem")).expect("key");
    let hmac = EncodingKey::from_secret(SECRET).expect("key");
    let cases = [
        (Algorithm::HS256, &hmac),
        (Algorithm::HS384, &hmac),
        (Algorithm::HS512, &hmac),
        (Algorithm::RS256, &rsa),
        (Algorithm::ES256, &ec),
    ];
    for (alg, key) in cases {
        let auth = match alg {
            Algorithm::RS256 => {
                JwtAuth::public_key(alg, include_bytes!("keys/rsa-public.pem")).expect("key")
            }
            Algorithm::ES256 => {
                JwtAuth::public_key(alg, include_bytes!("keys/ec-public.pem")).expect("key")
            }
            _ => JwtAuth::hmac(alg, SECRET).expect("key"),
        }
        .audience("chat")
        .issuer("https://auth.example");
        let builder = PresenceServer::builder().config(calm_config());
        let srv = TestServer::start_with_auth(builder, auth).await;
        let exp = now_secs() + 600;
        let good = json!({"sub": "ana", "exp": exp, "aud": "chat", "iss": "https://auth.example"});
        let url = |t: String| format!("ws://{}/ws?token={t}", srv.addr);
        let ana = Client::connect(&url(sign(alg, key, good.clone())), "ana", None).await;
        assert_eq!(ana.welcome["exp"], exp * 1000, "{alg:?}: welcome says when");
        ana.close().await;
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = json!("other");
        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = json!("https://evil.example");
        for (what, claims) in [("aud", wrong_aud), ("iss", wrong_iss)] {
            let answer = answer(url(sign(alg, key, claims))).await;
            assert_eq!(answer, "unauthorized 4101", "{alg:?}: wrong {what}");
        }
        srv.stop().await;
    }
}

/// A server on a manual clock that starts at the wall clock (JWTs are
/// checked against the wall clock; their expiry is enforced on this one).
async fn on_manual_clock() -> (TestServer, ManualClock) {
    let clock = ManualClock::new(Millis(now_secs() * 1000));
    // Batches flush at once: their window would wait for the clock to move.
    // Hours pass in these tests: heartbeats must not time out meanwhile.
    let mut config = ServerConfig {
        batch_window: Duration::ZERO,
        ..calm_config()
    };
    config.timing.heartbeat_interval = Duration::from_secs(3600);
    config.timing.heartbeat_timeout = Duration::from_secs(3 * 3600);
    let builder = PresenceServer::builder()
        .config(config)
        .clock(clock.clone());
    (TestServer::start_with(builder).await, clock)
}

#[tokio::test]
async fn without_a_refresh_the_socket_closes_with_4101_at_exp() {
    let (srv, clock) = on_manual_clock().await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    let exp = now_secs() + 60;
    let url = format!("ws://{}/ws?token={}", srv.addr, token_exp("ana", exp));
    let mut ana = Client::connect(&url, "ana", None).await;
    assert_eq!(ana.welcome["exp"], exp * 1000);
    ana.join("r").await;
    bob.diff("user_connected", "ana").await;
    clock.advance(Duration::from_millis(exp * 1000 - clock.now().0 - 1));
    srv.server.tick();
    ana.send(json!({"type": "ping"})).await;
    ana.frame("pong").await;
    clock.advance(Duration::from_millis(1));
    srv.server.tick();
    let e = ana.frame("error").await;
    assert_eq!(
        (&e["code"], &e["message"]),
        (&json!("unauthorized"), &json!("the token expired"))
    );
    assert_eq!(ana.close_code().await, 4101);
    // The connection is in its offline grace: back with a fresh token, it
    // resumes and bob sees no flap.
    let resume = ana.resume_token();
    let ana = srv.adopt(Client::connect(&srv.url("ana"), "ana", Some(&resume)).await);
    assert_eq!(ana.welcome["resumed"], true);
    assert!(
        bob.diff_within("user_disconnected", "ana", Duration::from_millis(500))
            .await
            .is_none()
    );
    let (_, metrics) = http_text(srv.addr, "/metrics").await;
    assert!(
        metrics.contains(r#"presence_tokens_total{outcome="expired"} 1"#),
        "{metrics}"
    );
    srv.finish().await;
}

#[tokio::test]
async fn an_auth_frame_moves_the_expiry_and_replaces_the_claims() {
    let (srv, clock) = on_manual_clock().await;
    let exp = now_secs() + 60;
    let first = token_with(json!({"sub": "ana", "exp": exp, "rooms": ["a", "b"]}));
    let url = format!("ws://{}/ws?token={first}", srv.addr);
    let mut ana = Client::connect(&url, "ana", None).await;
    ana.join("a").await;
    let later = now_secs() + 3600;
    let fresh = token_with(json!({"sub": "ana", "exp": later, "rooms": ["a"]}));
    ana.send(json!({"type": "auth", "token": fresh})).await;
    assert_eq!(
        ana.frame("auth_ok").await,
        json!({"type": "auth_ok", "exp": later * 1000})
    );
    clock.advance(Duration::from_secs(120));
    srv.server.tick();
    ana.send(json!({"type": "ping"})).await;
    ana.frame("pong").await;
    ana.send(json!({"type": "join", "room": "b"})).await;
    let e = ana.frame("error").await;
    assert_eq!(
        (&e["code"], &e["room"]),
        (&json!("forbidden"), &json!("b")),
        "the new claims apply"
    );
    clock.advance(Duration::from_secs(3600));
    srv.server.tick();
    assert_eq!(ana.close_code().await, 4101, "the new expiry holds");
    let (_, metrics) = http_text(srv.addr, "/metrics").await;
    assert!(
        metrics.contains(r#"presence_tokens_total{outcome="refreshed"} 1"#),
        "{metrics}"
    );
    srv.finish().await;
}

#[tokio::test]
async fn a_refresh_that_does_not_verify_or_names_another_user_closes_with_4101() {
    let srv = TestServer::start(calm_config()).await;
    let cases = [
        (
            "another user",
            token("bob"),
            "the refreshed token is for another user",
        ),
        (
            "expired",
            token_exp("ana", now_secs() - 3600),
            "the refreshed token was refused",
        ),
        (
            "garbage",
            "x.y.z".to_owned(),
            "the refreshed token was refused",
        ),
    ];
    for (what, token, message) in cases {
        let mut ana = srv.client("ana").await;
        ana.send(json!({"type": "auth", "token": token})).await;
        let e = ana.frame("error").await;
        assert_eq!(
            (&e["code"], &e["message"]),
            (&json!("unauthorized"), &json!(message)),
            "{what}"
        );
        assert_eq!(ana.close_code().await, 4101, "{what}");
    }
    let mut ana = srv.client("ana").await;
    for (frame, code) in [
        (json!({"type": "auth", "token": ""}), "invalid_field"),
        (
            json!({"type": "auth", "token": "t".repeat(8200)}),
            "invalid_field",
        ),
        (json!({"type": "auth"}), "invalid_field"),
    ] {
        ana.send(frame).await;
        let e = ana.frame("error").await;
        assert_eq!((&e["code"], &e["frame"]), (&json!(code), &json!("auth")));
    }
    // A long token within its bound passes the 4 KiB frame limit.
    let long = token_with(json!({"sub": "ana", "exp": now_secs() + 60, "pad": "p".repeat(5000)}));
    ana.send(json!({"type": "auth", "token": long})).await;
    ana.frame("auth_ok").await;
    srv.finish().await;
}

#[tokio::test]
async fn a_refresh_flood_is_rate_limited_then_closed() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    for _ in 0..3 {
        ana.send(json!({"type": "auth", "token": token("ana")}))
            .await;
        ana.frame("auth_ok").await;
    }
    ana.send(json!({"type": "auth", "token": token("ana")}))
        .await;
    let e = ana.frame("error").await;
    assert_eq!(
        (&e["code"], &e["frame"]),
        (&json!("rate_limited"), &json!("auth"))
    );
    let flood =
        (0..40).map(|_| Message::text(json!({"type": "auth", "token": token("ana")}).to_string()));
    ana.send_all(flood).await;
    assert_eq!(ana.close_code().await, 1008);
    srv.finish().await;
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
    srv.finish().await;
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
    srv.finish().await;
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
    srv.finish().await;
}

#[tokio::test]
async fn with_default_audience_none_a_token_without_claims_joins_nothing() {
    use presence_server::DefaultAudience;
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
    assert_eq!(answer(req).await, "unauthorized 4101");
    srv.finish().await;
}

/// Acceptance and expiry go by one clock, the server's: a token whose `exp` passed by it (here
/// 10 s ago, within the 30 s leeway the JWT check gives clock skew) is refused at the upgrade
/// and at a refresh, instead of welcomed and closed at the next tick.
#[tokio::test]
async fn a_token_past_its_exp_by_the_servers_clock_is_refused_not_welcomed() {
    let (srv, clock) = on_manual_clock().await;
    let exp = now_secs() + 60;
    clock.advance(Duration::from_secs(70));
    let url = format!("ws://{}/ws?token={}", srv.addr, token_exp("ana", exp));
    assert_eq!(answer(url).await, "unauthorized 4101");
    let addr = srv.addr;
    let (status, _) = http(
        addr,
        "GET",
        "/v1/users/ana/presence",
        &token_exp("ana", exp),
        None,
    )
    .await;
    assert_eq!(status, 401, "the HTTP API goes by the same clock");
    srv.finish().await;
}
