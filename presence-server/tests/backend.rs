//! The backend conformance suite: one set of test bodies, each run against
//! the in-process backend (`memory::`), one real Redis (`single::`,
//! 127.0.0.1:6379 or `PRESENCE_TEST_REDIS`) and a real Redis Cluster
//! (`cluster::`, seeds in `PRESENCE_TEST_REDIS_CLUSTER`, comma-separated
//! `host:port`; skipped, saying so, when unset). Each Redis test uses its own
//! key prefix and deletes its keys when it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use presence_core::cluster::NodeRecord;
use presence_core::machine::{Custom, Shown};
use presence_core::{JsonObject, Millis, RoomId, Status, UserId};
use presence_server::backend::stream::{Append, Keep, StreamId, shard_of};
use presence_server::backend::{
    Backend, BackendError, Bus, EventLog, Incarnation, Incoming, MAX_OWED, MemoryBackend,
    MemoryCluster, Owed, RedisBackend, RedisConfig, RedisTarget, Registry, Store, Stored, Topic,
    UserRecords,
};
use redis::Value;
use tokio::sync::mpsc;

const RETENTION: Duration = Duration::from_millis(300);
const TTL: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- the three

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Memory,
    Single,
    Cluster,
}

/// One test's world: which implementation, and for Redis its prefix and a
/// raw connection for looking behind the backend.
struct Env {
    kind: Kind,
    prefix: String,
    memory: MemoryCluster,
    url: String,
    seeds: Vec<String>,
}

fn redis_url() -> String {
    std::env::var("PRESENCE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{:x}{:x}{}",
        t & 0xffff_ffff,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Env {
    fn new(kind: Kind) -> Option<Self> {
        let seeds: Vec<String> = match kind {
            Kind::Cluster => match std::env::var("PRESENCE_TEST_REDIS_CLUSTER") {
                Ok(s) if !s.trim().is_empty() => {
                    s.split(',').map(|x| x.trim().to_owned()).collect()
                }
                _ => {
                    eprintln!(
                        "skipped: PRESENCE_TEST_REDIS_CLUSTER is unset (cargo xtask test sets it)"
                    );
                    return None;
                }
            },
            _ => Vec::new(),
        };
        Some(Self {
            kind,
            prefix: format!("ptest:backend:{}", unique()),
            memory: MemoryCluster::new(),
            url: redis_url(),
            seeds,
        })
    }

    fn node(&self) -> Arc<dyn Backend> {
        match self.kind {
            Kind::Memory => Arc::new(self.memory.node()),
            _ => Arc::new(self.redis(None)),
        }
    }

    /// A Redis backend, logged in as `user` (password `pw`) if given.
    fn redis(&self, user: Option<&str>) -> RedisBackend {
        let creds = user.map(|u| format!("{u}:pw@")).unwrap_or_default();
        let target = match self.kind {
            Kind::Single => {
                let rest = self.url.strip_prefix("redis://").unwrap_or(&self.url);
                RedisTarget::Single(format!("redis://{creds}{rest}"))
            }
            Kind::Cluster => RedisTarget::Cluster(
                self.seeds
                    .iter()
                    .map(|s| format!("redis://{creds}{s}"))
                    .collect(),
            ),
            Kind::Memory => unreachable!("not a Redis"),
        };
        RedisBackend::new(RedisConfig {
            target,
            prefix: self.prefix.clone(),
        })
        .expect("valid config")
    }

    fn seed_urls(&self) -> Vec<String> {
        self.seeds.iter().map(|s| format!("redis://{s}")).collect()
    }

    /// A command on the raw engine, behind the backend's back.
    async fn raw(&self, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
        match self.kind {
            Kind::Single => {
                let client = redis::Client::open(self.url.as_str())?;
                let mut c = client.get_multiplexed_async_connection().await?;
                cmd.query_async(&mut c).await
            }
            Kind::Cluster => {
                let client = redis::cluster::ClusterClient::new(self.seed_urls())?;
                let mut c = client.get_async_connection().await?;
                cmd.query_async(&mut c).await
            }
            Kind::Memory => unreachable!("not a Redis"),
        }
    }

    /// A command on every node (ACL and CLIENT are per node).
    async fn raw_everywhere(&self, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
        match self.kind {
            Kind::Cluster => {
                let client = redis::cluster::ClusterClient::new(self.seed_urls())?;
                let mut c = client.get_async_connection().await?;
                c.route_command(
                    cmd.clone(),
                    RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllNodes,
                        Some(ResponsePolicy::AllSucceeded),
                    )),
                )
                .await
            }
            _ => self.raw(cmd).await,
        }
    }
}

impl Drop for Env {
    /// Deletes the test's keys (best effort).
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.prefix);
        let delete = |c: &mut dyn redis::ConnectionLike| {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(c)
                .unwrap_or_default();
            for k in keys {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(k).query(c);
            }
        };
        match self.kind {
            Kind::Memory => {}
            Kind::Single => {
                if let Ok(mut c) =
                    redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
                {
                    delete(&mut c);
                }
            }
            Kind::Cluster => {
                if let Ok(mut c) = redis::cluster::ClusterClient::new(self.seed_urls())
                    .and_then(|c| c.get_connection())
                {
                    delete(&mut c);
                }
            }
        }
    }
}

/// Runs each body against the three implementations.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Env::new(super::Kind::Memory).expect("memory")).await;
            })*
        }
        mod single {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Env::new(super::Kind::Single).expect("single")).await;
            })*
        }
        mod cluster {
            $(#[tokio::test]
            async fn $name() {
                if let Some(env) = super::Env::new(super::Kind::Cluster) {
                    super::$name(env).await;
                }
            })*
        }
    };
}

conformance!(
    write_answers_previous_and_all,
    records_never_go_back,
    retention_expires_only_when_nothing_holds,
    replace_is_compare_and_set,
    memberships_and_members,
    read_markers_only_move_forward,
    leases_tell_live_dead_and_lapsed,
    end_lease_makes_dead,
    claim_returns_the_previous_incarnation,
    take_users_of_never_gives_a_user_twice,
    take_users_of_keeps_a_live_incarnation,
    publish_reaches_subscribers_in_order,
    unsubscribe_stops_delivery,
    topics_span_the_shards,
    overflow_drops_then_resets,
    link_loss_resets,
    resume_is_taken_once,
    bad_stored_values_never_panic,
    stream_keeps_order_per_shard_and_tells_trimming,
    stream_append_fails_whole_when_down,
    a_role_has_one_holder_and_keeps_its_state,
    changes_are_owed_until_settled,
);

// ---------------------------------------------------------------- setup

#[test]
fn redis_setup_refuses_bad_config() {
    use presence_server::backend::RedisSetupError;
    let with_prefix = |p: &str| RedisConfig {
        prefix: p.into(),
        ..RedisConfig::single("redis://127.0.0.1:6379")
    };
    for bad in ["", "a b", "a{b", "a}b"] {
        assert!(matches!(
            RedisBackend::new(with_prefix(bad)),
            Err(RedisSetupError::BadPrefix(_))
        ));
    }
    assert!(matches!(
        RedisBackend::new(RedisConfig::single("nonsense://x")),
        Err(RedisSetupError::Url(_))
    ));
    assert!(matches!(
        RedisBackend::new(RedisConfig::cluster(Vec::<String>::new())),
        Err(RedisSetupError::NoSeeds)
    ));
    // Built outside a runtime, connecting nothing.
    assert!(RedisBackend::new(with_prefix("ok")).is_ok());
    assert!(RedisBackend::new(RedisConfig::cluster(["127.0.0.1:1"])).is_ok());
}

#[tokio::test]
async fn redis_down_fails_calls_in_time() {
    // Nothing listens on port 1: every call fails within the call timeout.
    for config in [
        RedisConfig::single("redis://127.0.0.1:1"),
        RedisConfig::cluster(["127.0.0.1:1"]),
    ] {
        let b = RedisBackend::new(config).expect("valid config");
        let _rx = b.incoming();
        let started = std::time::Instant::now();
        assert!(b.read(&[user("ana")]).await.is_err());
        assert!(b.subscribe(vec![Topic::User(user("ana"))]).await.is_err());
        assert!(b.lease("a.1", TTL, false).await.is_err());
        let keep = Keep {
            per_shard: 10,
            max_age: TTL,
        };
        let batch = vec![appended(0, "a", 0), appended(1, "b", 1)];
        let (_, back) = b.append(batch.clone(), keep).await.expect_err("down");
        assert_eq!(back, batch, "every entry is handed back");
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "{:?}",
            started.elapsed()
        );
    }
}

/// A private redis-server on a free port, killed when dropped.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    fn start(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn redis_started_late_or_restarted_gives_reset() {
    // A node starts while its Redis is down, serves (its calls fail), and
    // gets a Reset once Redis is up; again after Redis restarts.
    let mut redis = OwnRedis {
        port: OwnRedis::free_port(),
        child: None,
    };
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let b = RedisBackend::new(RedisConfig::single(&url)).expect("valid config");
    let publ = RedisBackend::new(RedisConfig::single(&url)).expect("valid config");
    let mut rx = b.incoming();
    let t = Topic::Room(room("lobby"));
    assert!(b.subscribe(vec![t.clone()]).await.is_err(), "down");
    redis.start();
    assert_eq!(next(&mut rx).await, Incoming::Reset);
    b.subscribe(vec![t.clone()]).await.expect("subscribe");
    publ.publish(vec![(t.clone(), b"1".to_vec())])
        .await
        .expect("publish");
    assert_eq!(next(&mut rx).await, msg(&t, "1"));

    redis.stop();
    redis.start();
    assert_eq!(next(&mut rx).await, Incoming::Reset);
    // Subscriptions went with the old server: the node subscribes again.
    let mut tries = 0;
    while b.subscribe(vec![t.clone()]).await.is_err() {
        tries += 1;
        assert!(tries < 50, "Redis is back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while publ
        .publish(vec![(t.clone(), b"2".to_vec())])
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        match next(&mut rx).await {
            m if m == msg(&t, "2") => break,
            Incoming::Reset => {}
            m => panic!("unexpected {m:?}"),
        }
    }
}

// ---------------------------------------------------------------- helpers

fn inc(s: &str) -> Incarnation {
    Incarnation::parse(s).expect("an incarnation")
}

fn user(s: &str) -> UserId {
    UserId::new(s).expect("user id")
}

fn room(s: &str) -> RoomId {
    RoomId::new(s).expect("room id")
}

/// A record that holds the user (active, in `rooms`).
fn holding(seq: u64, rooms: &[&str]) -> Stored {
    Stored {
        seq,
        record: NodeRecord {
            shown: Shown::Active,
            last_active: Some(Millis(1000 + seq)),
            last_seen: None,
            rooms: rooms.iter().map(|r| room(r)).collect(),
            typing: Vec::new(),
            status: Status::Busy,
            text: None,
            status_at: Millis(7),
            // Stored and read back as it is, through every backend.
            custom: Custom {
                data: JsonObject::parse(r#"{"n":1.5,"viewing":"plan"}"#, 64).ok(),
                data_at: Millis(9),
                ..Custom::default()
            },
            privacy: presence_server::presence_core::Privacy {
                last_seen: presence_server::presence_core::LastSeen::Contacts,
                receipts: presence_server::presence_core::Receipts::Off,
            },
            privacy_at: Millis(8),
        },
    }
}

/// A record that lets the user go.
fn released(seq: u64) -> Stored {
    Stored {
        seq,
        record: NodeRecord::released(Some(Millis(2000 + seq)), Status::Available, None, Millis(0)),
    }
}

fn sorted(mut r: UserRecords) -> UserRecords {
    r.sort_by(|a, b| a.0.cmp(&b.0));
    r
}

fn recs(list: &[(&str, &Stored)]) -> UserRecords {
    sorted(list.iter().map(|(i, s)| (inc(i), (*s).clone())).collect())
}

async fn next(rx: &mut mpsc::Receiver<Incoming>) -> Incoming {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("something arrives in time")
        .expect("incoming stays open")
}

/// Nothing arrives for a while.
async fn quiet(rx: &mut mpsc::Receiver<Incoming>) {
    let got = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    assert!(got.is_err(), "unexpected {got:?}");
}

fn msg(t: &Topic, s: &str) -> Incoming {
    Incoming::Message(t.clone(), s.as_bytes().to_vec())
}

// ---------------------------------------------------------------- records

async fn write_answers_previous_and_all(env: Env) {
    let b = env.node();
    let (ana, bob) = (user("ana"), user("bob"));
    let a1 = holding(1, &["lobby"]);
    let w = b
        .write("a.1", vec![(ana.clone(), a1.clone())], RETENTION)
        .await
        .expect("write");
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].user, ana);
    assert_eq!(w[0].previous, None);
    assert_eq!(sorted(w[0].all.clone()), recs(&[("a.1", &a1)]));

    // A second incarnation, from another node.
    let other = env.node();
    let b1 = released(1);
    let w = other
        .write("b.1", vec![(ana.clone(), b1.clone())], RETENTION)
        .await
        .expect("write");
    assert_eq!(w[0].previous, None);
    assert_eq!(
        sorted(w[0].all.clone()),
        recs(&[("a.1", &a1), ("b.1", &b1)])
    );

    // A batch: two users, one of them twice, answered in order.
    let (a2, a3, bob1) = (holding(2, &[]), holding(3, &["x"]), holding(1, &[]));
    let w = b
        .write(
            "a.1",
            vec![
                (ana.clone(), a2.clone()),
                (bob.clone(), bob1.clone()),
                (ana.clone(), a3.clone()),
            ],
            RETENTION,
        )
        .await
        .expect("write");
    assert_eq!(w.len(), 3);
    assert_eq!(
        (w[0].user.clone(), w[0].previous.clone()),
        (ana.clone(), Some(a1))
    );
    assert_eq!(
        sorted(w[0].all.clone()),
        recs(&[("a.1", &a2), ("b.1", &b1)])
    );
    assert_eq!(
        (w[1].user.clone(), w[1].previous.clone()),
        (bob.clone(), None)
    );
    assert_eq!(w[2].previous, Some(a2));
    assert_eq!(
        sorted(w[2].all.clone()),
        recs(&[("a.1", &a3), ("b.1", &b1)])
    );

    let read = other
        .read(&[ana.clone(), user("nobody"), bob.clone()])
        .await
        .expect("read");
    assert_eq!(read.len(), 3);
    assert_eq!(sorted(read[0].clone()), recs(&[("a.1", &a3), ("b.1", &b1)]));
    assert!(read[1].is_empty());
    assert_eq!(read[2], recs(&[("a.1", &bob1)]));
    assert!(
        b.write("a.1", Vec::new(), RETENTION)
            .await
            .expect("empty")
            .is_empty()
    );
    assert!(b.read(&[]).await.expect("empty").is_empty());
}

async fn records_never_go_back(env: Env) {
    // A record sent again or an older one leaves the stored one (a dead
    // incarnation's late write cannot undo its cleaning), and `previous`
    // and `all` say what is there.
    let b = env.node();
    let ana = user("ana");
    let (s5, s3) = (holding(5, &["r"]), holding(3, &[]));
    b.write("a.1", vec![(ana.clone(), s5.clone())], RETENTION)
        .await
        .expect("write");
    let w = b
        .write("a.1", vec![(ana.clone(), s5.clone())], RETENTION)
        .await
        .expect("again");
    assert_eq!(w[0].previous, Some(s5.clone()));
    assert_eq!(w[0].all, recs(&[("a.1", &s5)]));
    let w = b
        .write("a.1", vec![(ana.clone(), s3.clone())], RETENTION)
        .await
        .expect("older");
    assert_eq!(w[0].previous, Some(s5.clone()));
    assert_eq!(w[0].all, recs(&[("a.1", &s5)]));
    assert_eq!(
        b.read(&[ana]).await.expect("read")[0],
        recs(&[("a.1", &s5)])
    );
}

async fn retention_expires_only_when_nothing_holds(env: Env) {
    let b = env.node();
    let (ana, bob) = (user("ana"), user("bob"));
    let held = holding(1, &["r"]);
    let gone = released(1);
    b.write(
        "a.1",
        vec![(ana.clone(), held.clone()), (bob.clone(), gone.clone())],
        RETENTION,
    )
    .await
    .expect("write");
    b.write("b.1", vec![(ana.clone(), gone.clone())], RETENTION)
        .await
        .expect("write");
    tokio::time::sleep(RETENTION * 2).await;
    let read = b.read(&[ana.clone(), bob.clone()]).await.expect("read");
    assert_eq!(
        sorted(read[0].clone()),
        recs(&[("a.1", &held), ("b.1", &gone)]),
        "held: kept"
    );
    assert!(read[1].is_empty(), "nothing held bob: expired");

    // Released by its last holder: the key goes after the retention.
    let let_go = released(2);
    b.write("a.1", vec![(ana.clone(), let_go.clone())], RETENTION)
        .await
        .expect("write");
    assert_eq!(
        b.read(std::slice::from_ref(&ana)).await.expect("read")[0].len(),
        2,
        "kept meanwhile"
    );
    tokio::time::sleep(RETENTION * 2).await;
    assert!(b.read(std::slice::from_ref(&ana)).await.expect("read")[0].is_empty());

    // Held again after expiring: stored afresh, and kept.
    let w = b
        .write("a.1", vec![(ana.clone(), holding(3, &[]))], RETENTION)
        .await
        .expect("w");
    assert_eq!(w[0].previous, None);
    tokio::time::sleep(RETENTION * 2).await;
    assert_eq!(b.read(&[ana]).await.expect("read")[0].len(), 1);
}

async fn replace_is_compare_and_set(env: Env) {
    let b = env.node();
    let (ana, bob) = (user("ana"), user("bob"));
    let mine = holding(4, &["r"]);
    let theirs = holding(9, &[]);
    b.write("dead.1", vec![(ana.clone(), theirs.clone())], RETENTION)
        .await
        .expect("write");
    b.write("live.1", vec![(ana.clone(), mine.clone())], RETENTION)
        .await
        .expect("write");

    let expired = Stored {
        seq: 10,
        record: theirs.record.expired(Millis(5000)),
    };
    let stale = b
        .replace(&ana, "dead.1", 8, expired.clone(), RETENTION)
        .await
        .expect("cas");
    assert_eq!(stale, None, "sequence moved on: not replaced");
    assert_eq!(
        sorted(b.read(std::slice::from_ref(&ana)).await.expect("read")[0].clone()),
        recs(&[("dead.1", &theirs), ("live.1", &mine)])
    );
    let done = b
        .replace(&ana, "dead.1", 9, expired.clone(), RETENTION)
        .await
        .expect("cas");
    assert_eq!(
        done.map(|(all, _)| sorted(all)),
        Some(recs(&[("dead.1", &expired), ("live.1", &mine)]))
    );
    // Sequence 9 is gone now.
    assert_eq!(
        b.replace(&ana, "dead.1", 9, released(11), RETENTION)
            .await
            .expect("cas"),
        None
    );
    assert_eq!(
        b.replace(&ana, "nobody.1", 0, released(1), RETENTION)
            .await
            .expect("cas"),
        None
    );
    assert_eq!(
        b.replace(&bob, "dead.1", 9, released(1), RETENTION)
            .await
            .expect("cas"),
        None
    );
    assert!(
        b.read(&[bob]).await.expect("read")[0].is_empty(),
        "replace creates nothing"
    );

    // The dead incarnation's late write (its old sequence, or any not past
    // the cleaner's) leaves the cleaned record: records never go back.
    for late in [theirs.clone(), holding(10, &["r"])] {
        let w = b
            .write("dead.1", vec![(ana.clone(), late)], RETENTION)
            .await
            .expect("write");
        assert_eq!(w[0].previous, Some(expired.clone()));
        assert_eq!(
            sorted(w[0].all.clone()),
            recs(&[("dead.1", &expired), ("live.1", &mine)]),
            "fenced"
        );
    }
    let newer = holding(12, &[]);
    let w = b
        .write("dead.1", vec![(ana.clone(), newer.clone())], RETENTION)
        .await
        .expect("write");
    assert_eq!(
        sorted(w[0].all.clone()),
        recs(&[("dead.1", &newer), ("live.1", &mine)])
    );

    // Replacing the last holding record lets the key expire.
    let carl = user("carl");
    b.write("dead.1", vec![(carl.clone(), holding(1, &[]))], RETENTION)
        .await
        .expect("write");
    b.replace(&carl, "dead.1", 1, released(2), RETENTION)
        .await
        .expect("cas")
        .expect("replaced");
    tokio::time::sleep(RETENTION * 2).await;
    assert!(b.read(&[carl]).await.expect("read")[0].is_empty());
}

// ---------------------------------------------------------------- rooms

async fn memberships_and_members(env: Env) {
    let (a, b) = (env.node(), env.node());
    let (r1, r2) = (room("r1"), room("r2"));
    let (ana, bob) = (user("ana"), user("bob"));
    a.memberships(
        "a.1",
        vec![
            (r1.clone(), ana.clone(), true),
            (r1.clone(), bob.clone(), true),
            (r2.clone(), ana.clone(), true),
            // Added then removed in one batch: the last change wins.
            (r2.clone(), bob.clone(), true),
            (r2.clone(), bob.clone(), false),
        ],
    )
    .await
    .expect("memberships");
    b.memberships("b.1", vec![(r1.clone(), ana.clone(), true)])
        .await
        .expect("memberships");

    let set = |v: Vec<(UserId, Incarnation)>| {
        v.into_iter()
            .map(|(u, i)| (u, i.to_string()))
            .collect::<BTreeSet<_>>()
    };
    let pair = |u: &UserId, i: &str| (u.clone(), i.to_owned());
    assert_eq!(
        set(b.members(&r1).await.expect("members")),
        BTreeSet::from([pair(&ana, "a.1"), pair(&bob, "a.1"), pair(&ana, "b.1")])
    );
    assert_eq!(
        set(a.members(&r2).await.expect("members")),
        BTreeSet::from([pair(&ana, "a.1")])
    );

    a.memberships(
        "a.1",
        vec![
            (r1.clone(), bob.clone(), false),
            (r1.clone(), ana.clone(), false),
        ],
    )
    .await
    .expect("memberships");
    assert_eq!(
        set(a.members(&r1).await.expect("members")),
        BTreeSet::from([pair(&ana, "b.1")])
    );
    assert!(a.members(&room("empty")).await.expect("members").is_empty());
    a.memberships("a.1", Vec::new())
        .await
        .expect("nothing to do");
}

async fn read_markers_only_move_forward(env: Env) {
    let b = env.node();
    let (r, s) = (room("r"), room("s"));
    let (ana, bob) = (user("ana"), user("bob"));
    let big = (1u64 << 53) - 1;
    let moved = b
        .mark_read(vec![
            (r.clone(), ana.clone(), 9),
            (s.clone(), ana.clone(), 3),
            (r.clone(), ana.clone(), 10), // longer: greater
            (r.clone(), bob.clone(), big - 1),
            (r.clone(), ana.clone(), 10), // equal: not moved
            (r.clone(), ana.clone(), 2),  // back: not moved
        ])
        .await
        .expect("mark");
    assert_eq!(
        moved,
        vec![
            (r.clone(), ana.clone(), 9),
            (s.clone(), ana.clone(), 3),
            (r.clone(), ana.clone(), 10),
            (r.clone(), bob.clone(), big - 1),
        ]
    );
    // Near and past 2^53, where doubles lose integers.
    let step = |m: u64| (r.clone(), bob.clone(), m);
    assert_eq!(
        b.mark_read(vec![step(big)]).await.expect("mark"),
        vec![step(big)]
    );
    assert_eq!(
        b.mark_read(vec![step(big - 1)]).await.expect("mark"),
        vec![]
    );
    assert_eq!(
        b.mark_read(vec![step(big + 2)]).await.expect("mark"),
        vec![step(big + 2)]
    );
    assert_eq!(
        b.mark_read(vec![step(big + 1)]).await.expect("mark"),
        vec![]
    );
    assert_eq!(
        b.mark_read(vec![step(u64::MAX)]).await.expect("mark"),
        vec![step(u64::MAX)]
    );
    assert_eq!(
        b.mark_read(vec![step(u64::MAX - 1)]).await.expect("mark"),
        vec![]
    );
    assert_eq!(b.mark_read(Vec::new()).await.expect("mark"), vec![]);

    let receipts = |v: Vec<(UserId, u64)>| v.into_iter().collect::<BTreeMap<_, _>>();
    assert_eq!(
        receipts(env.node().receipts(&r).await.expect("receipts")),
        BTreeMap::from([(ana.clone(), 10), (bob.clone(), u64::MAX)])
    );
    assert_eq!(
        receipts(b.receipts(&s).await.expect("receipts")),
        BTreeMap::from([(ana, 3)])
    );
    assert!(
        b.receipts(&room("none"))
            .await
            .expect("receipts")
            .is_empty()
    );
}

// ---------------------------------------------------------------- liveness

fn set<S: AsRef<str>>(v: &[S]) -> BTreeSet<String> {
    v.iter().map(|s| s.as_ref().to_owned()).collect()
}

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

async fn leases_tell_live_dead_and_lapsed(env: Env) {
    let (a, b) = (env.node(), env.node());
    let first = a.lease("a.1", TTL, false).await.expect("lease");
    assert!(!first.lapsed, "a first call registers");
    assert_eq!(set(&first.live), names(&["a.1"]));
    assert!(first.dead.is_empty());
    let l = b.lease("b.1", TTL, false).await.expect("lease");
    assert_eq!(set(&l.live), names(&["a.1", "b.1"]));

    tokio::time::sleep(TTL / 2).await;
    let l = a.lease("a.1", TTL, true).await.expect("lease");
    assert!(!l.lapsed);
    // What is left of a lease says when it was renewed.
    let left = |l: &presence_server::backend::Leases, i: &str| l.left.get(i).copied();
    assert!(left(&l, "a.1") > Some(TTL * 3 / 4), "just renewed");
    assert!(
        left(&l, "b.1") < Some(TTL * 3 / 4),
        "renewed half a TTL ago"
    );
    tokio::time::sleep(TTL / 2 + Duration::from_millis(100)).await;
    // b.1 renewed nothing: dead; a.1 renewed in time.
    let l = a.lease("a.1", TTL, true).await.expect("lease");
    assert!(!l.lapsed);
    assert_eq!(set(&l.live), names(&["a.1"]));
    assert_eq!(set(&l.dead), names(&["b.1"]));
    // b.1 comes back after its lease lapsed: a renewal sets nothing, so it
    // stays dead for everyone (its node goes on as a new incarnation).
    let l = b.lease("b.1", TTL, true).await.expect("lease");
    assert!(l.lapsed);
    assert_eq!(set(&l.live), names(&["a.1"]));
    assert_eq!(set(&l.dead), names(&["b.1"]));
    let l = a.lease("a.1", TTL, true).await.expect("lease");
    assert_eq!(set(&l.dead), names(&["b.1"]), "still dead");
    let l = b.lease("b.2", TTL, false).await.expect("lease");
    assert!(!l.lapsed);
    assert_eq!(set(&l.live), names(&["a.1", "b.2"]));
}

async fn end_lease_makes_dead(env: Env) {
    let b = env.node();
    let long = Duration::from_secs(30);
    b.lease("a.1", long, false).await.expect("lease");
    b.lease("b.1", long, false).await.expect("lease");
    b.end_lease("b.1").await.expect("end");
    let l = b.lease("a.1", long, false).await.expect("lease");
    assert_eq!(set(&l.live), names(&["a.1"]));
    assert_eq!(set(&l.dead), names(&["b.1"]));
    b.end_lease("never.1")
        .await
        .expect("ending nothing is fine");
}

async fn claim_returns_the_previous_incarnation(env: Env) {
    let (a, b) = (env.node(), env.node());
    assert_eq!(a.claim("eu-1", "eu-1.a").await.expect("claim"), None);
    assert_eq!(
        b.claim("eu-1", "eu-1.b").await.expect("claim"),
        Some(inc("eu-1.a"))
    );
    assert_eq!(a.claim("eu-2", "eu-2.a").await.expect("claim"), None);
    assert_eq!(
        a.claim("eu-1", "eu-1.c").await.expect("claim"),
        Some(inc("eu-1.b"))
    );
}

async fn take_users_of_never_gives_a_user_twice(env: Env) {
    let dead = env.node();
    let users: Vec<UserId> = (0..60).map(|i| user(&format!("u{i}"))).collect();
    let writes = users.iter().map(|u| (u.clone(), holding(1, &[]))).collect();
    dead.write("dead.1", writes, RETENTION)
        .await
        .expect("write");
    // A released user whose change was announced needs no cleaning: out of
    // the index. One not announced yet stays, for the cleaner to announce.
    dead.write("dead.1", vec![(user("gone"), holding(1, &[]))], RETENTION)
        .await
        .expect("w");
    dead.write("dead.1", vec![(user("gone"), released(2))], RETENTION)
        .await
        .expect("w");
    dead.unindex("dead.1", vec![user("gone")])
        .await
        .expect("unindex");
    dead.write("dead.1", vec![(user("owing"), released(1))], RETENTION)
        .await
        .expect("w");
    dead.lease("dead.1", TTL, false).await.expect("lease");
    drop(dead);
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;

    let (a, b) = (env.node(), env.node());
    let l = a
        .lease("a.1", Duration::from_secs(30), false)
        .await
        .expect("lease");
    assert_eq!(set(&l.dead), names(&["dead.1"]));
    let clean = |n: Arc<dyn Backend>| async move {
        let mut got = Vec::new();
        loop {
            let batch = n.take_users_of("dead.1", 7).await.expect("take");
            assert!(batch.len() <= 7);
            if batch.is_empty() {
                return got;
            }
            got.extend(batch);
        }
    };
    let (x, y) = tokio::join!(clean(a.clone()), clean(b.clone()));
    let mut all: Vec<UserId> = x.into_iter().chain(y).collect();
    all.sort();
    let mut want = users.clone();
    want.push(user("owing"));
    want.sort();
    assert_eq!(all, want, "every held or owing user exactly once");
    assert!(a.take_users_of("dead.1", 7).await.expect("take").is_empty());
    let l = a
        .lease("a.1", Duration::from_secs(30), false)
        .await
        .expect("lease");
    assert!(
        l.dead.is_empty() && !l.live.iter().any(|i| i == "dead.1"),
        "unregistered"
    );
    assert!(a.take_users_of("dead.1", 0).await.expect("take").is_empty());
}

async fn take_users_of_keeps_a_live_incarnation(env: Env) {
    let b = env.node();
    b.lease("a.1", Duration::from_secs(30), false)
        .await
        .expect("lease");
    assert!(b.take_users_of("a.1", 10).await.expect("take").is_empty());
    let l = b
        .lease("a.1", Duration::from_secs(30), false)
        .await
        .expect("lease");
    assert!(!l.lapsed);
    assert_eq!(set(&l.live), names(&["a.1"]));
}

// ---------------------------------------------------------------- bus

async fn publish_reaches_subscribers_in_order(env: Env) {
    let (sub, publ) = (env.node(), env.node());
    let mut rx = sub.incoming();
    let mut own = publ.incoming();
    let (lobby, ana, other) = (
        Topic::Room(room("lobby")),
        Topic::User(user("ana")),
        Topic::Room(room("elsewhere")),
    );
    sub.subscribe(vec![lobby.clone(), ana.clone()])
        .await
        .expect("subscribe");
    sub.subscribe(vec![lobby.clone()])
        .await
        .expect("subscribing twice is fine");
    // In force once subscribe returned: published right after, received.
    publ.publish(vec![
        (lobby.clone(), b"1".to_vec()),
        (other.clone(), b"never".to_vec()),
        (ana.clone(), b"a".to_vec()),
        (lobby.clone(), b"2".to_vec()),
        (ana.clone(), b"b".to_vec()),
        (lobby.clone(), b"3".to_vec()),
    ])
    .await
    .expect("publish");
    let mut by_topic: BTreeMap<Topic, Vec<Incoming>> = BTreeMap::new();
    for _ in 0..5 {
        let m = next(&mut rx).await;
        let Incoming::Message(t, _) = &m else {
            panic!("unexpected {m:?}");
        };
        by_topic.entry(t.clone()).or_default().push(m);
    }
    assert_eq!(
        by_topic[&lobby],
        vec![msg(&lobby, "1"), msg(&lobby, "2"), msg(&lobby, "3")]
    );
    assert_eq!(by_topic[&ana], vec![msg(&ana, "a"), msg(&ana, "b")]);
    quiet(&mut rx).await;
    quiet(&mut own).await;
    publ.publish(Vec::new()).await.expect("nothing to publish");
}

async fn unsubscribe_stops_delivery(env: Env) {
    let (sub, publ) = (env.node(), env.node());
    let mut rx = sub.incoming();
    let (lobby, ana) = (Topic::Room(room("lobby")), Topic::User(user("ana")));
    sub.subscribe(vec![lobby.clone(), ana.clone()])
        .await
        .expect("subscribe");
    sub.unsubscribe(vec![lobby.clone()])
        .await
        .expect("unsubscribe");
    sub.unsubscribe(vec![Topic::Room(room("never"))])
        .await
        .expect("not subscribed: fine");
    publ.publish(vec![
        (lobby.clone(), b"1".to_vec()),
        (ana.clone(), b"a".to_vec()),
    ])
    .await
    .expect("publish");
    assert_eq!(next(&mut rx).await, msg(&ana, "a"));
    quiet(&mut rx).await;
    sub.subscribe(vec![lobby.clone()])
        .await
        .expect("subscribe again");
    publ.publish(vec![(lobby.clone(), b"2".to_vec())])
        .await
        .expect("publish");
    assert_eq!(next(&mut rx).await, msg(&lobby, "2"));
}

async fn topics_span_the_shards(env: Env) {
    // Rooms and users whose channels hash to different masters, each in
    // order, all on one subscriber.
    let (sub, publ) = (env.node(), env.node());
    let mut rx = sub.incoming();
    let topics: Vec<Topic> = (0..12)
        .flat_map(|i| {
            [
                Topic::Room(room(&format!("room{i}"))),
                Topic::User(user(&format!("user{i}"))),
            ]
        })
        .collect();
    if env.kind == Kind::Cluster {
        let masters = masters_of(&env, &topics).await;
        assert!(masters.len() >= 2, "topics on one master only: {masters:?}");
    }
    sub.subscribe(topics.clone()).await.expect("subscribe");
    let mut messages = Vec::new();
    for n in 0..5 {
        for t in &topics {
            messages.push((t.clone(), n.to_string().into_bytes()));
        }
    }
    publ.publish(messages).await.expect("publish");
    let mut got: BTreeMap<Topic, Vec<String>> = BTreeMap::new();
    for _ in 0..topics.len() * 5 {
        let Incoming::Message(t, p) = next(&mut rx).await else {
            panic!("unexpected reset");
        };
        got.entry(t)
            .or_default()
            .push(String::from_utf8(p).expect("utf8"));
    }
    for t in &topics {
        assert_eq!(got[t], ["0", "1", "2", "3", "4"], "{t:?}");
    }
    quiet(&mut rx).await;
}

/// The masters (by first slot of their range) serving these topics' channels.
async fn masters_of(env: &Env, topics: &[Topic]) -> BTreeSet<i64> {
    let ranges = env
        .raw(&redis::cmd("CLUSTER").arg("SLOTS").clone())
        .await
        .expect("slots");
    let ranges: Vec<(i64, i64)> = match ranges {
        Value::Array(a) => a
            .into_iter()
            .filter_map(|r| match r {
                Value::Array(r) => match (r.first(), r.get(1)) {
                    (Some(Value::Int(s)), Some(Value::Int(e))) => Some((*s, *e)),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        other => panic!("CLUSTER SLOTS: {other:?}"),
    };
    let mut masters = BTreeSet::new();
    for t in topics {
        let channel = match t {
            Topic::Room(r) => format!("{}:{{r:{r}}}", env.prefix),
            Topic::User(u) => format!("{}:{{u:{u}}}", env.prefix),
            Topic::Node(n) => format!("{}:{{n:{n}}}", env.prefix),
        };
        let slot = env
            .raw(&redis::cmd("CLUSTER").arg("KEYSLOT").arg(channel).clone())
            .await
            .expect("keyslot");
        let Value::Int(slot) = slot else {
            panic!("KEYSLOT: {slot:?}")
        };
        if let Some((start, _)) = ranges.iter().find(|(s, e)| (*s..=*e).contains(&slot)) {
            masters.insert(*start);
        }
    }
    masters
}

async fn overflow_drops_then_resets(env: Env) {
    // A node that does not read: past 4096 queued, messages are dropped and
    // one Reset follows what was queued, then delivery goes on.
    let (sub, publ) = (env.node(), env.node());
    let mut rx = sub.incoming();
    let t = Topic::Room(room("busy"));
    sub.subscribe(vec![t.clone()]).await.expect("subscribe");
    let messages: Vec<_> = (0..5000)
        .map(|i| (t.clone(), i.to_string().into_bytes()))
        .collect();
    publ.publish(messages).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..4096 {
        assert_eq!(next(&mut rx).await, msg(&t, &i.to_string()));
    }
    assert_eq!(next(&mut rx).await, Incoming::Reset);
    quiet(&mut rx).await;
    publ.publish(vec![(t.clone(), b"after".to_vec())])
        .await
        .expect("publish");
    assert_eq!(next(&mut rx).await, msg(&t, "after"));
}

async fn link_loss_resets(env: Env) {
    let t = Topic::User(user("ana"));
    let publ = env.node();
    match env.kind {
        Kind::Memory => {
            let node: MemoryBackend = env.memory.node();
            let mut rx = node.incoming();
            node.subscribe(vec![t.clone()]).await.expect("subscribe");
            node.set_down(true);
            let err = node.subscribe(vec![t.clone()]).await.expect_err("down");
            assert!(matches!(err, BackendError::Engine(_)), "{err:?}");
            assert!(node.read(&[user("ana")]).await.is_err());
            publ.publish(vec![(t.clone(), b"lost".to_vec())])
                .await
                .expect("publish");
            quiet(&mut rx).await;
            node.set_down(false);
            assert_eq!(next(&mut rx).await, Incoming::Reset);
            resubscribe_and_check(&node, &publ, &mut rx, &t).await;
        }
        Kind::Single | Kind::Cluster => {
            // The node logs in as its own ACL user, so its connections can be
            // killed without touching any other test's.
            let login = format!("ptest-{}", unique());
            let _gone = AclUser(&env, login.clone());
            env.raw_everywhere(
                redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg(&login)
                    .arg("on")
                    .arg(">pw")
                    .arg("~*")
                    .arg("&*")
                    .arg("+@all"),
            )
            .await
            .expect("acl user");
            let node = env.redis(Some(&login));
            let mut rx = node.incoming();
            node.subscribe(vec![t.clone()]).await.expect("subscribe");
            publ.publish(vec![(t.clone(), b"before".to_vec())])
                .await
                .expect("publish");
            assert_eq!(next(&mut rx).await, msg(&t, "before"));
            env.raw_everywhere(redis::cmd("CLIENT").arg("KILL").arg("USER").arg(&login))
                .await
                .expect("kill");
            // Messages may arrive before the Reset (redis-rs resubscribes a
            // cluster node by itself); the Reset must come.
            loop {
                match next(&mut rx).await {
                    Incoming::Reset => break,
                    Incoming::Message(..) => {}
                }
            }
            resubscribe_and_check(&node, &publ, &mut rx, &t).await;
            node.end_lease("x").await.expect("calls work again");
        }
    }
}

async fn resubscribe_and_check(
    node: &dyn Backend,
    publ: &Arc<dyn Backend>,
    rx: &mut mpsc::Receiver<Incoming>,
    t: &Topic,
) {
    node.subscribe(vec![t.clone()])
        .await
        .expect("subscribe again");
    publ.publish(vec![(t.clone(), b"after".to_vec())])
        .await
        .expect("publish");
    loop {
        match next(rx).await {
            m if m == msg(t, "after") => break,
            Incoming::Reset => {}
            m => panic!("unexpected {m:?}"),
        }
    }
}

/// Deletes a test's ACL user (and so its connections) when the test ends.
struct AclUser<'a>(&'a Env, String);

impl Drop for AclUser<'_> {
    fn drop(&mut self) {
        let urls: Vec<String> = match self.0.kind {
            Kind::Single => vec![self.0.url.clone()],
            _ => self.0.seed_urls(),
        };
        // Every node of the cluster, as listed by the first seed.
        let mut nodes = urls.clone();
        if self.0.kind == Kind::Cluster
            && let Ok(mut c) =
                redis::Client::open(urls[0].as_str()).and_then(|c| c.get_connection())
        {
            let list: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut c)
                .unwrap_or_default();
            nodes = list
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter_map(|a| a.split('@').next())
                .map(|a| format!("redis://{a}"))
                .collect();
        }
        for url in nodes {
            if let Ok(mut c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
                let _: redis::RedisResult<()> =
                    redis::cmd("ACL").arg("DELUSER").arg(&self.1).query(&mut c);
            }
        }
    }
}

// ---------------------------------------------------------------- resume

async fn resume_is_taken_once(env: Env) {
    let (old, new) = (env.node(), env.node());
    old.save_resume("eu-1", "{\"conns\":[1,2]}".into(), Duration::from_secs(30))
        .await
        .expect("save");
    assert_eq!(
        new.take_resume("eu-1").await.expect("take"),
        Some("{\"conns\":[1,2]}".into())
    );
    assert_eq!(
        new.take_resume("eu-1").await.expect("take"),
        None,
        "taken once"
    );
    assert_eq!(new.take_resume("eu-2").await.expect("take"), None);
    old.save_resume("eu-3", "x".into(), TTL)
        .await
        .expect("save");
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    assert_eq!(
        new.take_resume("eu-3").await.expect("take"),
        None,
        "expired"
    );
}

// ---------------------------------------------------------------- bad input

async fn bad_stored_values_never_panic(env: Env) {
    if env.kind == Kind::Memory {
        eprintln!("skipped: the memory backend stores values, not bytes to corrupt");
        return;
    }
    let b = env.node();
    let ana = user("ana");
    let good = holding(1, &["r"]);
    b.write("a.1", vec![(ana.clone(), good.clone())], RETENTION)
        .await
        .expect("write");
    let key = format!("{}:{{u:ana}}", env.prefix);
    for (field, value) in [
        ("junk.1", &b"garbage"[..]),
        ("junk.2", b"h {\"q\":"),
        ("junk.3", b"h {\"q\":1,\"s\":\"flying\"}"),
        ("junk.4", b"o [1,2]"),
        ("junk.5", b"\xff\xfe"),
    ] {
        env.raw(redis::cmd("HSET").arg(&key).arg(field).arg(value))
            .await
            .expect("hset");
    }
    // Bad fields are skipped (and logged); the good one is read.
    assert_eq!(
        b.read(std::slice::from_ref(&ana)).await.expect("read")[0],
        recs(&[("a.1", &good)])
    );
    let w = b
        .write("b.1", vec![(ana.clone(), released(1))], RETENTION)
        .await
        .expect("write");
    assert_eq!(
        sorted(w[0].all.clone()),
        recs(&[("a.1", &good), ("b.1", &released(1))])
    );
    // This incarnation's own field corrupted: no previous, overwritten.
    let w = b
        .write("junk.1", vec![(ana.clone(), holding(2, &[]))], RETENTION)
        .await
        .expect("w");
    assert_eq!(w[0].previous, None);
    assert_eq!(
        b.replace(&ana, "junk.2", 1, released(3), RETENTION)
            .await
            .expect("cas"),
        None,
        "a corrupted record is never replaced"
    );

    // The key of the wrong type: the engine's error, not a panic.
    let bob = user("bob");
    env.raw(
        redis::cmd("SET")
            .arg(format!("{}:{{u:bob}}", env.prefix))
            .arg("x"),
    )
    .await
    .expect("set");
    assert!(matches!(
        b.read(std::slice::from_ref(&bob)).await,
        Err(BackendError::Engine(_))
    ));
    assert!(
        b.write("a.1", vec![(bob, holding(1, &[]))], RETENTION)
            .await
            .is_err()
    );

    // Bad room members and markers are skipped; a bad marker is overwritten.
    let r = room("r");
    env.raw(
        redis::cmd("SADD")
            .arg(format!("{}:{{r:r}}:m", env.prefix))
            .arg("nospace")
            .arg("a b c")
            .arg("a b.1"),
    )
    .await
    .expect("sadd");
    // No incarnation holds a space: only the well-formed member is read.
    assert_eq!(
        b.members(&r).await.expect("members"),
        vec![(user("a"), inc("b.1"))]
    );
    env.raw(
        redis::cmd("HSET")
            .arg(format!("{}:{{r:r}}:rc", env.prefix))
            .arg("ana")
            .arg("12x"),
    )
    .await
    .expect("hset");
    env.raw(
        redis::cmd("HSET")
            .arg(format!("{}:{{r:r}}:rc", env.prefix))
            .arg("bob")
            .arg("5"),
    )
    .await
    .expect("hset");
    assert_eq!(
        b.receipts(&r).await.expect("receipts"),
        vec![(user("bob"), 5)]
    );
    assert_eq!(
        b.mark_read(vec![(r.clone(), ana.clone(), 1)])
            .await
            .expect("mark")
            .len(),
        1
    );
    assert_eq!(
        b.mark_read(vec![(r.clone(), user("bob"), 4)])
            .await
            .expect("mark")
            .len(),
        0
    );

    // A registry entry and an index entry that are not ids.
    env.raw(
        redis::cmd("SADD")
            .arg(format!("{}:{{i:dead.9}}:users", env.prefix))
            .arg("a b"),
    )
    .await
    .expect("sadd");
    assert!(b.take_users_of("dead.9", 5).await.expect("take").is_empty());

    // What arrives is only bytes: anything published is handed on as is.
    let mut rx = b.incoming();
    let t = Topic::Room(room("r"));
    b.subscribe(vec![t.clone()]).await.expect("subscribe");
    env.raw(
        redis::cmd("SPUBLISH")
            .arg(format!("{}:{{r:r}}", env.prefix))
            .arg(&b"\xff\x00"[..]),
    )
    .await
    .expect("spublish");
    assert_eq!(next(&mut rx).await, Incoming::Message(t, vec![0xff, 0]));
}

// ---------------------------------------------------------------- stream

fn appended(shard: u16, user: &str, n: usize) -> Append {
    Append {
        shard,
        kind: "status".into(),
        user: user.into(),
        data: format!("{{\"user\":\"{user}\",\"n\":{n}}}"),
    }
}

async fn stream_keeps_order_per_shard_and_tells_trimming(env: Env) {
    let (a, b) = (env.node(), env.node());
    let keep = Keep {
        per_shard: 1000,
        max_age: Duration::from_secs(3600),
    };
    let start: Vec<(u16, StreamId)> = (0..4).map(|s| (s, StreamId::default())).collect();
    let empty = b.read_stream(start.clone(), 10).await.expect("read");
    assert!(
        empty
            .iter()
            .all(|r| r.entries.is_empty() && r.last == StreamId::default())
    );
    // Four shards (on a cluster, several masters), 50 events each, appended
    // by two nodes in turns.
    for n in 0..50 {
        let node = if n % 2 == 0 { &a } else { &b };
        let batch = (0..4).map(|s| appended(s, &format!("u{s}"), n)).collect();
        node.append(batch, keep)
            .await
            .map_err(|(e, _)| e)
            .expect("append");
    }
    let ends = b
        .read_stream(start.clone(), 0)
        .await
        .expect("read the ends");
    assert!(
        ends.iter()
            .all(|r| r.entries.is_empty() && r.last.seq == 50)
    );
    let mut pos = start;
    let mut seen: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    loop {
        let reads = b.read_stream(pos.clone(), 7).await.expect("read");
        if reads.iter().all(|r| r.entries.is_empty()) {
            break;
        }
        for r in reads {
            assert!(!r.gap(pos[r.shard as usize].1), "nothing trimmed yet");
            let mut last = pos[r.shard as usize].1;
            for e in r.entries {
                assert!(e.id > last, "ids grow in a shard");
                last = e.id;
                assert_eq!(e.user, format!("u{}", r.shard));
                let v: serde_json::Value = serde_json::from_str(&e.data).expect("json");
                seen.entry(r.shard)
                    .or_default()
                    .push(v["n"].as_u64().expect("n") as usize);
            }
            assert_eq!(r.last, last.max(r.last));
            pos[r.shard as usize].1 = last;
        }
    }
    for s in 0..4 {
        assert_eq!(seen[&s], (0..50).collect::<Vec<_>>(), "shard {s}");
    }
    // Trimming by length: a reader from the start is told what went.
    let small = Keep {
        per_shard: 1,
        max_age: Duration::from_secs(3600),
    };
    let many = (0..300).map(|n| appended(0, "u0", 100 + n)).collect();
    let trimmed = a
        .append(many, small)
        .await
        .map_err(|(e, _)| e)
        .expect("append");
    assert!(trimmed >= 100, "the trimming is told: {trimmed}");
    let r = &b
        .read_stream(vec![(0, StreamId::default())], 1000)
        .await
        .expect("read")[0];
    assert!(r.gap(StreamId::default()), "the start was trimmed");
    assert!(r.entries.len() < 350, "{} kept", r.entries.len());
    assert_eq!(r.last.seq, 350, "numbered 1..=350");
    assert_eq!(r.entries.last().map(|e| e.id), Some(r.last));
    let tail = StreamId {
        ms: r.last.ms,
        seq: r.last.seq - 1,
    };
    let r = &b.read_stream(vec![(0, tail)], 1000).await.expect("read")[0];
    assert!(!r.gap(tail), "a reader near the end missed nothing");
    assert_eq!(r.entries.len(), 1);
    let future = StreamId {
        ms: r.last.ms,
        seq: 351,
    };
    assert!(r.gap(future), "a position beyond the stream is a gap");
    // Trimming by age (Redis drops a block of 100 only when all of it is
    // old enough).
    let old = (0..150).map(|n| appended(2, "u2", 100 + n)).collect();
    a.append(old, keep)
        .await
        .map_err(|(e, _)| e)
        .expect("append");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let young = Keep {
        per_shard: 1000,
        max_age: Duration::from_millis(1),
    };
    let many = (0..300).map(|n| appended(2, "u2", n)).collect();
    a.append(many, young)
        .await
        .map_err(|(e, _)| e)
        .expect("append");
    let r = &b
        .read_stream(vec![(2, pos[2].1)], 1000)
        .await
        .expect("read")[0];
    assert!(r.gap(pos[2].1), "old entries of shard 2 trimmed by age");
    assert!(shard_of("ana", 8) < 8);
}

async fn stream_append_fails_whole_when_down(env: Env) {
    if env.kind != Kind::Memory {
        return; // a lost Redis link is tested in redis_down_fails_calls_in_time
    }
    let node = env.memory.node();
    node.set_down(true);
    let keep = Keep {
        per_shard: 10,
        max_age: Duration::from_secs(60),
    };
    let batch = vec![appended(0, "a", 0), appended(1, "b", 1)];
    let (_, back) = node.append(batch.clone(), keep).await.expect_err("down");
    assert_eq!(back, batch, "every entry is handed back");
}

async fn a_role_has_one_holder_and_keeps_its_state(env: Env) {
    let (a, b) = (env.node(), env.node());
    let role = "hook-5f3a";
    assert_eq!(
        a.hold(role, "a.1", TTL, None).await.expect("hold"),
        (true, None)
    );
    assert_eq!(
        b.hold(role, "b.1", TTL, None).await.expect("hold"),
        (false, None)
    );
    let saved = Some("cursor-1".to_owned());
    assert_eq!(
        a.hold(role, "a.1", TTL, saved.clone()).await.expect("hold"),
        (true, saved.clone()),
        "the holder keeps it and saves"
    );
    assert_eq!(
        b.hold(role, "b.1", TTL, Some("stolen".into()))
            .await
            .expect("hold"),
        (false, saved.clone()),
        "another saves nothing"
    );
    // The holder stops renewing: after the TTL the other takes the role,
    // and the state with it.
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert_eq!(
        b.hold(role, "b.1", TTL, None).await.expect("hold"),
        (true, saved)
    );
    assert!(
        !a.hold(role, "a.1", TTL, Some("late".into()))
            .await
            .expect("hold")
            .0
    );
}

async fn changes_are_owed_until_settled(env: Env) {
    let (a, b) = (env.node(), env.node());
    let ana = user("ana");
    let ids = |owed: &[Owed]| owed.iter().map(Owed::id).collect::<Vec<_>>();
    let a1 = holding(1, &["r"]);
    let w = a
        .write("a.1", vec![(ana.clone(), a1.clone())], RETENTION)
        .await
        .expect("write");
    assert!(w[0].owed.is_empty() && w[0].wrote);
    assert_eq!(
        w[0].own("a.1"),
        Some(Owed {
            inc: inc("a.1"),
            seq: 1,
            old: None,
            all: recs(&[("a.1", &a1)]),
        }),
        "the write's change, as the write saw it"
    );
    let a2 = holding(2, &[]);
    let w = a
        .write("a.1", vec![(ana.clone(), a2.clone())], RETENTION)
        .await
        .expect("write");
    assert_eq!(ids(&w[0].owed), ["a.1:1"], "the earlier ones, oldest first");
    assert_eq!(
        w[0].own("a.1").map(|o| (o.id(), o.old)),
        Some(("a.1:2".into(), Some(a1.clone())))
    );
    // A write that changes nothing owes nothing.
    let w = a
        .write("a.1", vec![(ana.clone(), a2.clone())], RETENTION)
        .await
        .expect("write");
    assert!(!w[0].wrote && w[0].own("a.1").is_none());
    assert_eq!(ids(&w[0].owed), ["a.1:1", "a.1:2"]);
    let b1 = released(1);
    let w = b
        .write("b.1", vec![(ana.clone(), b1.clone())], RETENTION)
        .await
        .expect("write");
    assert_eq!(ids(&w[0].owed), ["a.1:1", "a.1:2"], "any node's");
    let own = w[0].own("b.1").expect("written");
    assert_eq!(own.id(), "b.1:1");
    assert_eq!(sorted(own.all), recs(&[("a.1", &a2), ("b.1", &b1)]));
    // Settling takes from the front only.
    b.settle(vec![(ana.clone(), vec!["b.1:1".into()])])
        .await
        .expect("settle");
    let owed = |n: &Arc<dyn Backend>| {
        let n = n.clone();
        let ana = ana.clone();
        async move { ids(&n.owed(&[ana]).await.expect("owed")[0]) }
    };
    assert_eq!(owed(&a).await, ["a.1:1", "a.1:2", "b.1:1"]);
    a.settle(vec![(ana.clone(), vec!["a.1:1".into()])])
        .await
        .expect("settle");
    assert_eq!(owed(&b).await, ["a.1:2", "b.1:1"]);
    b.settle(vec![(ana.clone(), vec!["a.1:2".into(), "b.1:1".into()])])
        .await
        .expect("settle");
    assert!(owed(&a).await.is_empty());
    // A cleaner's replacement is owed too, named by the dead incarnation.
    let expired = Stored {
        seq: 3,
        record: a2.record.expired(Millis(9000)),
    };
    let (_, o) = b
        .replace(&ana, "a.1", 2, expired, RETENTION)
        .await
        .expect("cas")
        .expect("replaced");
    assert_eq!(ids(&o), ["a.1:3"]);
    assert_eq!(o[0].old, Some(a2));
    // Bounded: the oldest go.
    let bob = user("bob");
    for seq in 1..=(MAX_OWED as u64 + 6) {
        a.write("a.1", vec![(bob.clone(), holding(seq, &[]))], RETENTION)
            .await
            .expect("write");
    }
    let o = &a.owed(&[bob]).await.expect("owed")[0];
    assert_eq!(o.len(), MAX_OWED);
    assert_eq!(o[0].id(), "a.1:7");
}
