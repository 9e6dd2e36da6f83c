//! The client machine the browser SDK runs (`presence_core::client::Client`),
//! driven over real sockets against a real server that is shut down and
//! started again on the same port: the client backs off, reconnects, resends
//! its rooms, and others see the user again without anyone calling `join`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use presence_core::client::{
    Action, Client, ClientConfig, ClientEvent, ConnectionState, PresenceKind,
};
use presence_core::{Millis, PresenceState, RoomId, TimingPolicy, UserId};
use presence_server::{DevAuth, PresenceServer, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

fn now() -> Millis {
    Millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// Serves a fresh in-memory server on `addr` until the returned sender fires.
async fn serve(addr: SocketAddr) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let config = ServerConfig {
        timing: TimingPolicy {
            heartbeat_interval: Duration::from_millis(200),
            heartbeat_timeout: Duration::from_millis(600),
            offline_grace: Duration::from_millis(300),
            leave_grace: Duration::from_millis(100),
            idle_after: Duration::from_secs(60),
            typing_ttl: Duration::from_secs(1),
        },
        batch_window: Duration::from_millis(5),
        ..ServerConfig::default()
    };
    let server = PresenceServer::builder()
        .config(config)
        .auth(DevAuth)
        .build()
        .expect("server builds");
    // The port was just freed by the previous server: retry briefly.
    let mut listener = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let listener = listener.expect("port free again");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    (stop, task)
}

/// Runs a client machine over tokio-tungstenite until `quit`, reporting its events.
fn spawn_client(
    addr: SocketAddr,
    user: &str,
    room: &str,
) -> (mpsc::UnboundedReceiver<ClientEvent>, oneshot::Sender<()>) {
    let (events, rx) = mpsc::unbounded_channel();
    let (quit, mut quit_rx) = oneshot::channel::<()>();
    let url = format!("ws://{addr}/ws?token={user}");
    let room = RoomId::new(room).expect("room id");
    tokio::spawn(async move {
        let config = ClientConfig {
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(400),
            reply_timeout: Duration::from_secs(1),
            ..ClientConfig::default()
        };
        let mut client = Client::new(now(), config);
        client.join(room);
        client.start(now());
        let mut socket = None;
        loop {
            while let Some(action) = client.poll_action() {
                match action {
                    Action::Connect => match tokio_tungstenite::connect_async(url.as_str()).await {
                        Ok((ws, _)) => {
                            socket = Some(ws);
                            client.opened(now());
                        }
                        Err(_) => client.closed(now(), None),
                    },
                    Action::Send(text) => {
                        if let Some(ws) = socket.as_mut() {
                            let _ = ws.send(Message::text(text)).await;
                        }
                    }
                    Action::Close(_) => socket = None,
                    // The token is in the URL; this client has no source of fresh ones.
                    Action::FetchToken => client.token_failed(now()),
                }
            }
            while let Some(e) = client.poll_event() {
                let _ = events.send(e);
            }
            let wait = client
                .next_deadline(now())
                .map_or(Duration::from_secs(1), |at| at.since(now()));
            tokio::select! {
                _ = &mut quit_rx => return,
                _ = tokio::time::sleep(wait) => client.tick(now()),
                frame = async { socket.as_mut()?.next().await }, if socket.is_some() => match frame {
                    Some(Ok(Message::Text(t))) => client.received(now(), &t),
                    Some(Ok(Message::Close(c))) => {
                        socket = None;
                        client.closed(now(), c.map(|c| u16::from(c.code)));
                    }
                    Some(Ok(_)) => {}
                    _ => {
                        socket = None;
                        client.closed(now(), None);
                    }
                },
            }
        }
    });
    (rx, quit)
}

/// Waits (bounded) for an event matching `want`.
async fn until(
    rx: &mut mpsc::UnboundedReceiver<ClientEvent>,
    what: &str,
    want: impl Fn(&ClientEvent) -> bool,
) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = rx.recv().await {
            if want(&e) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "timed out waiting for {what}");
}

fn sees(user: &str, state: PresenceState) -> impl Fn(&ClientEvent) -> bool {
    let user = UserId::new(user).expect("user id");
    move |e| matches!(e, ClientEvent::Presence { view, .. } if view.user == user && view.state == state)
}

#[tokio::test]
async fn clients_reconnect_after_a_server_restart_and_rejoin_their_rooms() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (stop, task) = serve(addr).await;
    let (mut ana, quit_ana) = spawn_client(addr, "ana", "general");
    let (mut bob, quit_bob) = spawn_client(addr, "bob", "general");
    until(&mut bob, "bob sees ana", sees("ana", PresenceState::Active)).await;

    // The server goes away (clients get 1001) and comes back empty.
    let _ = stop.send(());
    let _ = task.await;
    until(&mut ana, "ana reconnecting", |e| {
        matches!(
            e,
            ClientEvent::Connection(ConnectionState::Reconnecting { .. })
        )
    })
    .await;
    let (stop, task) = serve(addr).await;
    until(&mut ana, "ana connected again", |e| {
        matches!(e, ClientEvent::Connection(ConnectionState::Connected))
    })
    .await;
    // Nobody called join again: the client resent its rooms after welcome.
    // Events tell only changes, so bob may hear nothing about ana (his new
    // snapshot shows her as before) or that she left and came back (it
    // came before she did): folded, they must end on ana active.
    let mut ana_is = Some(PresenceState::Active);
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        let mut rejoined = false;
        loop {
            match tokio::time::timeout(Duration::from_millis(500), bob.recv()).await {
                Ok(Some(ClientEvent::Joined(_))) => rejoined = true,
                Ok(Some(ClientEvent::Presence { view, kind, .. }))
                    if view.user.as_str() == "ana" =>
                {
                    ana_is = (kind != PresenceKind::Left).then_some(view.state);
                }
                Ok(Some(_)) => {}
                Ok(None) => return false,
                // Quiet for half a second after the rejoin: settled.
                Err(_) if rejoined => return ana_is == Some(PresenceState::Active),
                Err(_) => {}
            }
        }
    })
    .await;
    assert_eq!(settled, Ok(true), "bob sees ana active again: {ana_is:?}");

    let _ = quit_ana.send(());
    until(
        &mut bob,
        "bob sees ana go",
        sees("ana", PresenceState::Offline),
    )
    .await;
    let _ = quit_bob.send(());
    let _ = stop.send(());
    let _ = task.await;
}
