//! Shared test helpers: a server on 127.0.0.1:0 with a short timing policy,
//! and a small WebSocket client that reads JSON frames with timeouts.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use presence_server::presence_core::TimingPolicy;
use presence_server::{Builder, JwtAuth, PresenceServer, ServerConfig};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &[u8] = b"test-secret-0123456789-abcdefghijklmnop";
pub const SERVICE_KEY: &str = "service-key-0123456789";
/// Longest any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(3);

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A token for `user` valid for an hour.
pub fn token(user: &str) -> String {
    token_exp(user, now_secs() + 3600)
}

pub fn token_exp(user: &str, exp: u64) -> String {
    token_with(json!({ "sub": user, "exp": exp }))
}

/// A token with these claims, signed with [`SECRET`].
pub fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET).expect("secret"),
    )
    .expect("token encodes")
}

/// Short timings: a dead socket is noticed in 400 ms, graces are 300/100 ms.
pub fn fast_config() -> ServerConfig {
    ServerConfig {
        timing: TimingPolicy {
            heartbeat_interval: Duration::from_millis(150),
            heartbeat_timeout: Duration::from_millis(400),
            offline_grace: Duration::from_millis(300),
            leave_grace: Duration::from_millis(100),
            idle_after: Duration::from_secs(60),
            typing_ttl: Duration::from_millis(300),
        },
        batch_window: Duration::from_millis(5),
        service_key: Some(SERVICE_KEY.into()),
        ..ServerConfig::default()
    }
}

/// Like [`fast_config`] but a silent client lives for 10 s, for tests that
/// do not ping.
pub fn calm_config() -> ServerConfig {
    let mut c = fast_config();
    c.timing.heartbeat_interval = Duration::from_secs(5);
    c.timing.heartbeat_timeout = Duration::from_secs(10);
    c
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub server: PresenceServer,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    /// The sockets of the clients it made, for [`finish`](Self::finish);
    /// gone with their client.
    clients: std::sync::Mutex<Vec<Weak<std::net::TcpStream>>>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> Self {
        Self::start_with(PresenceServer::builder().config(config)).await
    }

    pub async fn start_with(builder: Builder) -> Self {
        Self::start_with_auth(builder, JwtAuth::hs256(SECRET).expect("secret")).await
    }

    pub async fn start_with_auth(builder: Builder, auth: JwtAuth) -> Self {
        Self::start_server(builder.auth(auth).build().expect("server builds")).await
    }

    /// Serves a server built by the test itself.
    pub async fn start_server(server: PresenceServer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let s = server.clone();
        let task = tokio::spawn(async move {
            s.serve(listener, async move {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            addr,
            server,
            stop: Some(stop),
            task,
            clients: Default::default(),
        }
    }

    pub fn url(&self, user: &str) -> String {
        format!("ws://{}/ws?token={}", self.addr, token(user))
    }

    pub async fn client(&self, user: &str) -> Client {
        self.adopt(Client::connect(&self.url(user), user, None).await)
    }

    /// Notes a client of this server that the test made itself, for
    /// [`finish`](Self::finish).
    pub fn adopt(&self, c: Client) -> Client {
        if let Some(tcp) = &c.tcp {
            let clients = &mut self.clients.lock().expect("lock");
            clients.push(Arc::downgrade(tcp));
        }
        c
    }

    /// `users` in `room`, joined together (one by one, each would wait for
    /// its snapshot's batch window); in no particular order.
    pub async fn crowd(&self, room: &str, users: impl IntoIterator<Item = String>) -> Vec<Client> {
        let joined = users.into_iter().map(|u| async move {
            let mut c = self.client(&u).await;
            c.join(room).await;
            c
        });
        futures_util::future::join_all(joined).await
    }

    /// Drops the serve task on the floor, without a graceful shutdown.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// The test is over: ends the sockets of the clients it made or
    /// [`adopt`](Self::adopt)ed, then [`stop`](Self::stop)s. A client the test
    /// no longer reads would hold the graceful close for its 3 s timeout.
    pub async fn finish(self) {
        for tcp in self.clients.lock().expect("lock").drain(..) {
            if let Some(tcp) = tcp.upgrade() {
                let _ = tcp.shutdown(std::net::Shutdown::Both);
            }
        }
        self.stop().await;
    }

    /// Stops the server and waits for `serve` to return: each socket is
    /// closed with 1001 and waited for (at most 3 s) to answer.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("serve returns after shutdown");
        r.expect("serve task").expect("serve ok");
    }

    pub async fn get(&self, path: &str, bearer: &str) -> (u16, Value) {
        http(self.addr, "GET", path, bearer, None).await
    }

    pub async fn post(&self, path: &str, bearer: &str, body: &str) -> (u16, Value) {
        http(self.addr, "POST", path, bearer, Some(body)).await
    }
}

/// Opens a data directory, waiting (bounded) for a previous server's store
/// to close: it does when its last task lets go of it.
pub async fn open_data_dir(dir: &std::path::Path) -> presence_server::DataDir {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match presence_server::DataDir::open(dir) {
            Ok(d) => return d,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// One HTTP/1.1 request through hyper's client: the status and the body
/// as JSON (`Null` if it is not).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let (status, body) = request(addr, method, path, bearer, body).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// One request on a fresh connection: the status and the whole body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<&str>,
) -> (u16, Vec<u8>) {
    use http_body_util::BodyExt;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if !bearer.is_empty() {
        req = req.header("authorization", format!("Bearer {bearer}"));
    }
    let body = http_body_util::Full::new(bytes::Bytes::from(body.unwrap_or("").to_owned()));
    let req = req.body(body).expect("a request");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    tokio::time::timeout(WAIT, async {
        let res = client.request(req).await.expect("a response");
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.expect("the body");
        (status, body.to_bytes().to_vec())
    })
    .await
    .expect("an answer in time")
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub user: String,
    pub welcome: Value,
    diffs: VecDeque<(Option<String>, Value)>,
    /// Its socket, shared (a duplicate descriptor, closed with it) so that
    /// [`TestServer::finish`] can end it.
    tcp: Option<Arc<std::net::TcpStream>>,
}

impl Client {
    /// Wraps a socket that has not said hello.
    pub fn raw(ws: Ws, user: &str) -> Client {
        let tcp = match ws.get_ref() {
            MaybeTlsStream::Plain(tcp) => std::os::fd::AsFd::as_fd(tcp).try_clone_to_owned().ok(),
            _ => None,
        };
        Client {
            ws,
            user: user.into(),
            welcome: Value::Null,
            diffs: VecDeque::new(),
            tcp: tcp.map(|fd| Arc::new(std::net::TcpStream::from(fd))),
        }
    }

    /// Connects, says hello (with `resume` if given) and waits for `welcome`.
    pub async fn connect(url: &str, user: &str, resume: Option<&str>) -> Client {
        Self::connect_with(url, user, resume, json!({})).await
    }

    /// [`connect`](Self::connect) with more `hello` fields (`device`, `activity`).
    pub async fn connect_with(url: &str, user: &str, resume: Option<&str>, more: Value) -> Client {
        // No Nagle: a frame sent right after another goes at once, not
        // after the server's delayed ACK (about 40 ms).
        let connect = tokio_tungstenite::connect_async_with_config(url, None, true);
        let (ws, _) = tokio::time::timeout(WAIT, connect)
            .await
            .expect("connect in time")
            .expect("upgrade accepted");
        let mut c = Client::raw(ws, user);
        let mut hello = json!({"type": "hello", "v": 1});
        if let Some(r) = resume {
            hello["resume"] = json!(r);
        }
        if let (Some(h), Some(more)) = (hello.as_object_mut(), more.as_object()) {
            h.extend(more.clone());
        }
        c.send(hello).await;
        c.welcome = c.frame("welcome").await;
        c
    }

    pub fn resume_token(&self) -> String {
        self.welcome["resume"]
            .as_str()
            .expect("resume token")
            .into()
    }

    pub async fn send(&mut self, v: Value) {
        self.send_raw(&v.to_string()).await;
    }

    /// Writes `messages` in one go (one flush), as a flood or a restore would.
    pub async fn send_all(&mut self, messages: impl IntoIterator<Item = Message>) {
        for m in messages {
            self.ws.feed(m).await.expect("feed");
        }
        self.ws.flush().await.expect("flush");
    }

    pub async fn send_raw(&mut self, s: &str) {
        self.ws
            .send(Message::text(s.to_owned()))
            .await
            .expect("send");
    }

    /// The next text frame as JSON; panics on close or after [`WAIT`].
    pub async fn next(&mut self) -> Value {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("{}: no frame within {WAIT:?}", self.user))
    }

    /// The next text frame, or `None` if none comes within `d`.
    pub async fn next_within(&mut self, d: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("server sends JSON"));
                }
                Some(Ok(Message::Close(f))) => panic!("{}: closed: {f:?}", self.user),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("{}: socket error: {e}", self.user),
                None => panic!("{}: socket ended", self.user),
            }
        }
    }

    /// Skips frames until one of type `kind`.
    pub async fn frame(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self
                .next_within(left)
                .await
                .unwrap_or_else(|| panic!("{}: no {kind} frame within {WAIT:?}", self.user));
            if f["type"] == kind {
                return f;
            }
            self.stash(&f);
        }
    }

    fn stash(&mut self, f: &Value) {
        if f["type"] == "diffs" {
            let room = f["room"].as_str().map(String::from);
            for d in f["diffs"].as_array().into_iter().flatten() {
                self.diffs.push_back((room.clone(), d.clone()));
            }
        }
    }

    /// Skips diffs until one of `kind` about `user`; returns (room, diff).
    pub async fn diff(&mut self, kind: &str, user: &str) -> (Option<String>, Value) {
        self.diff_within(kind, user, WAIT)
            .await
            .unwrap_or_else(|| panic!("{}: no {kind} diff about {user} within {WAIT:?}", self.user))
    }

    pub async fn diff_within(
        &mut self,
        kind: &str,
        user: &str,
        d: Duration,
    ) -> Option<(Option<String>, Value)> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            while let Some((room, diff)) = self.diffs.pop_front() {
                if diff["type"] == kind && diff_user(&diff) == user {
                    return Some((room, diff));
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.next_within(left).await?;
            self.stash(&f);
        }
    }

    /// Every diff received during `d`, in order (already stashed ones first).
    pub async fn diffs_during(&mut self, d: Duration) -> Vec<(Option<String>, Value)> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.next_within(left).await {
                Some(f) => self.stash(&f),
                None => break,
            }
        }
        self.diffs.drain(..).collect()
    }

    /// Reads until the server closes; returns the close code.
    pub async fn close_code(&mut self) -> u16 {
        self.close_code_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("{}: no close frame within {WAIT:?}", self.user))
    }

    pub async fn close_code_within(&mut self, d: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?
            {
                Some(Ok(Message::Close(f))) => {
                    // Answered (tungstenite queued the reply): the server
                    // need not wait its close timeout for it.
                    let _ = tokio::time::timeout_at(deadline, self.ws.flush()).await;
                    return Some(f.map_or(1005, |f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("{}: socket error before close: {e}", self.user),
                None => panic!("{}: socket ended without a close frame", self.user),
            }
        }
    }

    /// Closes cleanly (close frame), as a tab closing does after `leaving`.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
        let _ = tokio::time::timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type": "join", "room": room})).await;
        self.frame("snapshot").await
    }
}

/// The user a diff is about.
pub fn diff_user(diff: &Value) -> &str {
    diff["user"]
        .as_str()
        .or_else(|| diff["presence"]["user"].as_str())
        .unwrap_or("")
}

/// Names of the users in a snapshot's or watching frame's list.
pub fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["user"].as_str().map(String::from))
        .collect();
    v.sort();
    v
}

/// A GET: the status and the body as text.
pub async fn http_text(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let (status, body) = request(addr, "GET", path, "", None).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Deletes every key under `prefix` on each Redis at `urls` (best effort,
/// one key at a time so it works on a Redis Cluster's masters too).
pub fn delete_redis_keys(urls: &[String], prefix: &str) {
    for url in urls {
        let Ok(mut c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) else {
            continue;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query(&mut c)
            .unwrap_or_default();
        for key in keys {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(key).query(&mut c);
        }
    }
}

/// One reader of `GET /v1/events`. HTTP/1.0, so the body is the raw event
/// stream (no chunked framing to undo).
pub struct SseReader {
    lines: tokio::io::Lines<tokio::io::BufReader<TcpStream>>,
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

impl SseReader {
    /// Opens the feed (resuming after `last`); the status and the reader.
    pub async fn open(srv: &TestServer, bearer: &str, last: Option<&str>) -> (u16, SseReader) {
        Self::open_at(srv.addr, bearer, last).await
    }

    /// [`SseReader::open`] on any address (a server in another process).
    pub async fn open_at(addr: SocketAddr, bearer: &str, last: Option<&str>) -> (u16, SseReader) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let resume = last.map_or(String::new(), |l| format!("Last-Event-ID: {l}\r\n"));
        let req = format!(
            "GET /v1/events HTTP/1.0\r\nHost: t\r\nAuthorization: Bearer {bearer}\r\n{resume}\r\n"
        );
        tcp.write_all(req.as_bytes()).await.expect("write");
        let mut lines = tokio::io::BufReader::new(tcp).lines();
        let status_line = lines.next_line().await.expect("read").unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.is_empty() {
                break;
            }
        }
        (status, SseReader { lines })
    }

    /// The next event (comments skipped); fails after [`WAIT`].
    pub async fn next(&mut self) -> SseEvent {
        self.next_within(WAIT).await.expect("an event in time")
    }

    /// The next event within `d`, if any.
    pub async fn next_within(&mut self, d: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + d;
        let mut ev = SseEvent {
            id: None,
            event: String::new(),
            data: Value::Null,
        };
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .ok()?
                .expect("read")
                .expect("stream open");
            if line.is_empty() && !ev.event.is_empty() {
                return Some(ev);
            }
            if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                ev.id = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                ev.event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                ev.data = serde_json::from_str(v).expect("json data");
            }
        }
    }

    /// Skips to the next `kind` event about `user`.
    pub async fn find(&mut self, kind: &str, user: &str) -> SseEvent {
        loop {
            let ev = self.next().await;
            if ev.event == kind && diff_user(&ev.data) == user {
                return ev;
            }
        }
    }
}
