//! Async app hooks through the real upgrade: an authenticator that reads a
//! session cookie, and an audience policy that asks a real PostgreSQL table
//! (127.0.0.1:5432, database `test`; `cargo xtask test` starts it if down).

mod common;

use std::time::Duration;

use common::*;
use presence_server::presence_core::{RoomId, UserId};
use presence_server::{
    AudiencePolicy, AuthError, AuthRequest, Authenticator, BoxFuture, Identity, PresenceServer,
};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Sessions by cookie: `sid=s-ana` is ana. Claims carry her team.
struct CookieSessions;

impl Authenticator for CookieSessions {
    fn authenticate<'a>(
        &'a self,
        request: &'a AuthRequest<'a>,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            // Stands for a session-store lookup.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let sid = request.cookie("sid").ok_or(AuthError::Missing)?;
            let name = sid.strip_prefix("s-").ok_or(AuthError::Missing)?;
            let user = UserId::new(name).map_err(|e| AuthError::BadUser(e.to_string()))?;
            let mut who = Identity::from(user);
            who.claims.insert("team".into(), json!("blue"));
            Ok(who)
        })
    }
}

/// Membership and contacts in PostgreSQL; rooms named `slow-*` stall.
struct Postgres {
    db: tokio_postgres::Client,
    table: String,
}

impl AudiencePolicy for Postgres {
    fn may_join<'a>(&'a self, who: &'a Identity, room: &'a RoomId) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            if room.as_str().starts_with("slow-") {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            let sql = format!(
                "select 1 from {} where user_id = $1 and target = $2 and kind = 'room'",
                self.table
            );
            let team_ok = who.claims.get("team") == Some(&json!("blue"));
            team_ok
                && self
                    .db
                    .query_opt(&sql, &[&who.user.as_str(), &room.as_str()])
                    .await
                    .is_ok_and(|row| row.is_some())
        })
    }

    fn may_watch<'a>(&'a self, who: &'a Identity, target: &'a UserId) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let sql = format!(
                "select 1 from {} where user_id = $1 and target = $2 and kind = 'contact'",
                self.table
            );
            self.db
                .query_opt(&sql, &[&who.user.as_str(), &target.as_str()])
                .await
                .is_ok_and(|row| row.is_some())
        })
    }
}

async fn postgres(table: &str) -> tokio_postgres::Client {
    let (db, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 dbname=test user=postgres",
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL on 127.0.0.1:5432 (cargo xtask test starts it)");
    tokio::spawn(conn);
    db.batch_execute(&format!(
        "drop table if exists {table};
         create table {table} (user_id text not null, target text not null, kind text not null);
         insert into {table} values ('ana', 'general', 'room'), ('ana', 'bob', 'contact');"
    ))
    .await
    .expect("table");
    db
}

async fn connect(srv: &TestServer, sid: &str) -> Client {
    let mut req = format!("ws://{}/ws", srv.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "cookie",
        format!("theme=dark; sid={sid}").parse().expect("header"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    let mut c = Client::raw(ws, sid);
    c.send(json!({"type": "hello", "v": 1})).await;
    c.welcome = c.frame("welcome").await;
    c
}

#[tokio::test]
async fn an_async_cookie_authenticator_and_a_postgres_policy_decide_who_sees_whom() {
    let table = format!("presence_policy_{}", std::process::id());
    let db = postgres(&table).await;
    let mut config = calm_config();
    config.policy_timeout = Duration::from_millis(300);
    let server = PresenceServer::builder()
        .config(config)
        .auth(CookieSessions)
        .audience(Postgres {
            db,
            table: table.clone(),
        })
        .build()
        .expect("builds");
    let srv = TestServer::start_server(server).await;

    let mut ana = connect(&srv, "s-ana").await;
    assert_eq!(ana.welcome["user"], "ana");
    ana.join("general").await;
    ana.send(json!({"type": "join", "room": "random"})).await;
    let e = ana.frame("error").await;
    assert_eq!(
        (&e["code"], &e["room"]),
        (&json!("forbidden"), &json!("random"))
    );
    ana.send(json!({"type": "watch", "users": ["bob", "carol"]}))
        .await;
    let e = ana.frame("error").await;
    assert_eq!(e["users"], json!(["carol"]));
    assert_eq!(names(&ana.frame("watching").await["users"]), ["bob"]);
    // A policy that does not answer in time: a retryable refusal, counted,
    // and the socket's later frames still in order behind it.
    ana.send(json!({"type": "join", "room": "slow-room"})).await;
    ana.send(json!({"type": "ping"})).await;
    let e = ana.frame("error").await;
    assert_eq!(
        (&e["code"], &e["room"]),
        (&json!("internal"), &json!("slow-room"))
    );
    ana.frame("pong").await;
    let (_, metrics) = http_text(srv.addr, "/metrics").await;
    assert!(
        metrics.contains("presence_policy_timeouts_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("presence_denied_total{what=\"join\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("presence_denied_total{what=\"watch\"} 1"),
        "{metrics}"
    );
    // No cookie, or an unknown one: refused after the upgrade.
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", srv.addr))
        .await
        .expect("upgraded");
    let mut anon = Client::raw(ws, "anon");
    assert_eq!(anon.frame("error").await["code"], "unauthorized");
    assert_eq!(anon.close_code().await, 4101);
    srv.stop().await;
    let cleanup = postgres(&format!("{table}_x")).await;
    let _ = cleanup
        .batch_execute(&format!(
            "drop table if exists {table}; drop table if exists {table}_x;"
        ))
        .await;
}

#[tokio::test]
async fn a_slow_authenticator_gets_503_not_a_hung_upgrade() {
    struct Stuck;
    impl Authenticator for Stuck {
        fn authenticate<'a>(
            &'a self,
            _request: &'a AuthRequest<'a>,
        ) -> BoxFuture<'a, Result<Identity, AuthError>> {
            Box::pin(std::future::pending())
        }
    }
    let mut config = calm_config();
    config.policy_timeout = Duration::from_millis(200);
    let server = PresenceServer::builder()
        .config(config)
        .auth(Stuck)
        .build()
        .expect("builds");
    let srv = TestServer::start_server(server).await;
    let started = tokio::time::Instant::now();
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws?token=x", srv.addr))
        .await
        .expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {other}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    srv.finish().await;
}
