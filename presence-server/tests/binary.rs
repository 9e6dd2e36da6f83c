//! The real binary and what outlives it: with `--data-dir`, user state
//! survives a `kill -9`, and a graceful restart lets clients resume without
//! observers seeing a flap. Also the binary's own `--healthcheck` (which
//! container images run) and its `--config` file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use presence_server::PresenceServer;
use serde_json::{Value, json};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("presence-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The real binary with `--data-dir`, dev auth and short graces.
struct Binary {
    child: Child,
    port: u16,
}

impl Binary {
    async fn start(dir: &Path, port: u16) -> Binary {
        let mut command = Command::new(env!("CARGO_BIN_EXE_presence-server"));
        command
            .args(["--dev-auth", "--service-key", SERVICE_KEY, "--log", "warn"])
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--leave-grace-ms", "100", "--offline-grace-ms", "300"])
            .arg("--data-dir")
            .arg(dir);
        Self::spawn(command, port).await
    }

    async fn spawn(mut command: Command, port: u16) -> Binary {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(tokio::time::Instant::now() < deadline, "listening in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Binary { child, port }
    }

    fn url(&self, user: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?token={user}", self.port)
    }

    async fn presence(&self, user: &str) -> Value {
        let addr = ([127, 0, 0, 1], self.port).into();
        let path = format!("/v1/users/{user}/presence");
        let (status, body) = http(addr, "GET", &path, SERVICE_KEY, None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// SIGKILL: nothing runs on the way out.
    fn kill_9(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reaped");
    }
}

#[tokio::test]
async fn kill_9_keeps_status_text_last_seen_and_read_markers() {
    let dir = temp_dir("kill-9");
    let port = free_port();
    let server = Binary::start(&dir, port).await;
    let mut ana = Client::connect(&server.url("ana"), "ana", None).await;
    ana.join("r").await;
    ana.send(json!({"type": "status", "status": "busy", "text": "focus"}))
        .await;
    ana.frame("self_status").await;
    ana.send(json!({"type": "read", "room": "r", "marker": 42}))
        .await;
    ana.send(json!({"type": "leaving"})).await;
    assert_eq!(ana.close_code().await, 1000);
    // Offline after the 100 ms leave grace, then one more write window.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = server.presence("ana").await;
    assert_eq!(before["state"], "offline");
    assert!(before["last_seen"].is_u64(), "{before}");
    server.kill_9();

    let server = Binary::start(&dir, port).await;
    let after = server.presence("ana").await;
    assert_eq!(after, before, "status, text and last seen survive");
    let mut bob = Client::connect(&server.url("bob"), "bob", None).await;
    let snapshot = bob.join("r").await;
    assert_eq!(
        snapshot["receipts"],
        json!([{"user": "ana", "marker": 42}]),
        "a newcomer sees the offline reader's receipt after the restart"
    );
    let addr = ([127, 0, 0, 1], port).into();
    let (_, seen) = http(addr, "GET", "/v1/rooms/r/receipts?at=42", SERVICE_KEY, None).await;
    assert_eq!(seen["count"], 1, "{seen}");
    let mut ana = Client::connect(&server.url("ana"), "ana", None).await;
    assert_eq!(
        (&ana.welcome["status"], &ana.welcome["text"]),
        (&json!("busy"), &json!("focus"))
    );
    let snapshot = ana.join("r").await;
    assert_eq!(
        snapshot["receipts"],
        json!([{"user": "ana", "marker": 42}]),
        "the read marker survives"
    );
    server.kill_9();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn kill_9_keeps_the_event_feed_and_a_reader_resumes_after_the_restart() {
    let dir = temp_dir("kill-9-feed");
    let port = free_port();
    let server = Binary::start(&dir, port).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let (status, mut feed) = SseReader::open_at(addr, SERVICE_KEY, None).await;
    assert_eq!(status, 200);
    let mut ana = Client::connect(&server.url("ana"), "ana", None).await;
    ana.join("r").await;
    let connected = feed.find("user_connected", "ana").await;
    ana.send(json!({"type": "status", "status": "busy"})).await;
    let busy = feed.find("status", "ana").await;
    // One write window, then SIGKILL.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(feed);
    server.kill_9();

    let server = Binary::start(&dir, port).await;
    let after = connected.id.clone().expect("an id");
    let (status, mut feed) = SseReader::open_at(addr, SERVICE_KEY, Some(&after)).await;
    assert_eq!(status, 200);
    let first = feed.next().await;
    assert_ne!(first.id, connected.id, "resumed after it");
    let replayed = if first.event == "status" {
        first
    } else {
        feed.find("status", "ana").await
    };
    assert_eq!(
        replayed.id, busy.id,
        "replayed after the restart, under the same id"
    );
    assert_eq!(replayed.data, busy.data);
    // New events number on after the kept ones.
    let mut bob = Client::connect(&server.url("bob"), "bob", None).await;
    bob.join("r").await;
    let fresh = feed.find("user_connected", "bob").await;
    let num = |e: &SseEvent| {
        e.id.as_deref()
            .and_then(|i| i.parse::<u64>().ok())
            .expect("a number")
    };
    assert!(num(&fresh) > num(&busy));
    server.kill_9();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The container's image sets no data dir in the environment, but an
/// operator's `PRESENCE_DATA_DIR=` (empty) must mean none, so a cluster node
/// starts with Redis.
#[tokio::test]
async fn an_empty_data_dir_variable_means_none_and_a_redis_node_starts() {
    let port = free_port();
    let url =
        std::env::var("PRESENCE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("ptest:emptydir:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_presence-server"));
    command
        .args(["--dev-auth", "--log", "warn"])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", &url, "--redis-prefix", &prefix])
        .env("PRESENCE_DATA_DIR", "");
    let server = Binary::spawn(command, port).await;
    let addr = ([127, 0, 0, 1], port).into();
    let (status, body) = http(addr, "GET", "/healthz", "", None).await;
    assert_eq!(status, 200, "{body}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while http(addr, "GET", "/readyz", "", None).await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready once registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill_9();
    delete_redis_keys(&[url], &prefix);
}

/// A node started while its Redis is down is alive (`/healthz` 200, `"redis":"down"`) but not
/// ready from its first moment: nobody else would see its users.
#[tokio::test]
async fn a_node_started_with_redis_down_is_not_ready() {
    let port = free_port();
    let dead = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_presence-server"));
    command
        .args(["--dev-auth", "--log", "error"])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", &format!("redis://127.0.0.1:{dead}")]);
    let server = Binary::spawn(command, port).await;
    let addr = ([127, 0, 0, 1], port).into();
    let (status, body) = http(addr, "GET", "/readyz", "", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "joining_cluster", "{body}");
    let (status, body) = http(addr, "GET", "/healthz", "", None).await;
    assert_eq!((status, &body["redis"]), (200, &json!("down")), "{body}");
    server.kill_9();
}

/// The README's flag table names every flag `--help` lists, and no other.
#[test]
fn the_readme_flag_table_matches_help() {
    let help = Command::new(env!("CARGO_BIN_EXE_presence-server"))
        .arg("--help")
        .output()
        .expect("--help runs");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags = |text: &str| -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(str::to_owned)
            .collect()
    };
    let mut from_help: std::collections::BTreeSet<String> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("--") || l.starts_with('-'))
        .flat_map(|l| flags(l.split("  ").next().unwrap_or("")))
        .collect();
    from_help.remove("--help");
    from_help.remove("--version");
    let readme = include_str!("../README.md");
    let table = readme
        .split("| flag | env | default |")
        .nth(1)
        .expect("the README has a flag table");
    let rows: String = table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap_or("").to_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let from_readme = flags(&rows);
    assert_eq!(
        from_readme, from_help,
        "README flag table (left) against --help (right)"
    );
}

async fn start_with_dir(dir: &Path) -> TestServer {
    let data = open_data_dir(dir).await;
    let mut config = calm_config();
    config.timing.offline_grace = Duration::from_secs(2);
    TestServer::start_with(PresenceServer::builder().config(config).data_dir(data)).await
}

#[tokio::test]
async fn clients_back_within_the_grace_after_a_restart_resume_without_a_flap() {
    let dir = temp_dir("restart");
    let srv = start_with_dir(&dir).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let token = ana.resume_token();
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    // Read while it stops: the closes are answered, not waited out.
    let ((), ana_code, bob_code) = tokio::join!(srv.stop(), ana.close_code(), bob.close_code());
    assert_eq!((ana_code, bob_code), (1001, 1001));

    let srv = start_with_dir(&dir).await;
    // bob is back first: ana is still shown, in her grace.
    let mut bob = srv.client("bob").await;
    let snapshot = bob.join("r").await;
    assert_eq!(names(&snapshot["members"]), ["ana", "bob"]);
    let mut ana = srv.adopt(Client::connect(&srv.url("ana"), "ana", Some(&token)).await);
    assert_eq!(ana.welcome["resumed"], true);
    assert_eq!(ana.join("r").await["room"], "r");
    let seen = bob.diffs_during(Duration::from_millis(2500)).await;
    assert!(
        seen.iter().all(|(_, d)| diff_user(d) != "ana"),
        "bob saw no flap of ana: {seen:?}"
    );
    srv.finish().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_binary_answers_its_own_healthcheck() {
    let dir = temp_dir("healthcheck");
    let port = free_port();
    let server = Binary::start(&dir, port).await;
    let check = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_presence-server"))
            .args(["--healthcheck", "--bind", &format!("127.0.0.1:{port}")])
            .stderr(Stdio::null())
            .status()
            .expect("runs")
    };
    assert!(check(port).success());
    server.kill_9();
    assert!(!check(port).success(), "nobody listens any more");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_config_file_is_read_and_env_and_flags_override_it() {
    let dir = temp_dir("config");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("presence.toml");
    std::fs::write(
        &file,
        r#"
dev-auth = true
service_key = "config-file-service-key"
heartbeat-interval-ms = 5000
idle-after-ms = 7000
log = "warn"
"#,
    )
    .expect("write");
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_presence-server"));
    command
        .arg("--config")
        .arg(&file)
        .env("PRESENCE_IDLE_AFTER_MS", "8000")
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--heartbeat-interval-ms", "6000"]);
    let server = Binary::spawn(command, port).await;
    let c = Client::connect(&server.url("ana"), "ana", None).await;
    assert_eq!(
        c.welcome["heartbeat_ms"], 6000,
        "the flag wins over the file"
    );
    assert_eq!(
        c.welcome["idle_after_ms"], 8000,
        "the environment wins over the file"
    );
    let addr = ([127, 0, 0, 1], port).into();
    let (status, _) = http(
        addr,
        "GET",
        "/v1/users/ana/presence",
        "config-file-service-key",
        None,
    )
    .await;
    assert_eq!(status, 200, "the file's service key");
    server.kill_9();

    std::fs::write(&file, "dev-auth = true\nheartbeat-interval = 5\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_presence-server"))
        .arg("--config")
        .arg(&file)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown setting \"heartbeat-interval\""),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's "environment variables and flags override the file" holds for settings that
/// exclude each other: `PRESENCE_JWT_SECRET` wins over the file's `jwt-secret-file` (which
/// names no file, so reading it would fail), and `--bind localhost:PORT` is a name that binds.
#[tokio::test]
async fn an_environment_secret_overrides_the_files_secret_file_and_a_host_name_binds() {
    let dir = temp_dir("config-alternatives");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("presence.toml");
    std::fs::write(
        &file,
        "jwt-secret-file = \"/nonexistent/jwt.key\"\nlog = \"warn\"\n",
    )
    .expect("write");
    let port = free_port();
    let bind = format!("localhost:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_presence-server"))
        .arg("--config")
        .arg(&file)
        .env("PRESENCE_JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .args(["--bind", &bind])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(bind.as_str()).await.is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("exited with {status}: {err}");
        }
        assert!(tokio::time::Instant::now() < deadline, "listening in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let check = Command::new(env!("CARGO_BIN_EXE_presence-server"))
        .args(["--healthcheck", "--bind", &bind])
        .status()
        .expect("runs");
    assert!(check.success(), "the healthcheck resolves the name too");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A webhook secret long enough to pass.
const HOOK_SECRET_16: &str = "0123456789abcdef";

/// Under `--log-format json` (flag, environment or file) a start-up error is one JSON log line
/// with the cause, whether it comes from a flag's value, the config file or the settings; and a
/// guessable webhook secret is one of those errors, as is a `viewing` webhook without
/// `--viewing-events`.
#[test]
fn start_up_errors_are_json_under_the_json_log_format() {
    let dir = temp_dir("json-errors");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("presence.toml");
    std::fs::write(&file, "log-format = \"json\"\ndev-auth = true\nbogus = 1\n").expect("write");
    let run = |args: &[&str], env: Option<(&str, &str)>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_presence-server"));
        command.args(args).env_remove("PRESENCE_LOG_FORMAT");
        if let Some((k, v)) = env {
            command.env(k, v);
        }
        let out = command.output().expect("runs");
        assert_eq!(out.status.code(), Some(1), "{args:?} fails");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = stdout.lines().last().unwrap_or_default();
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout:?} / {:?}", out.stderr));
        assert_eq!(v["level"], "ERROR", "{v}");
        v["fields"]["error"].as_str().unwrap_or_default().to_owned()
    };
    let error = run(&["--log-format", "json"], None);
    assert!(error.contains("no authentication configured"), "{error}");
    let error = run(&["--log-format=json", "--bind", "4000"], None);
    assert!(error.contains("not HOST:PORT"), "{error}");
    let config = file.to_string_lossy().into_owned();
    let error = run(
        &["--config", &config],
        Some(("PRESENCE_LOG_FORMAT", "json")),
    );
    assert!(error.contains("unknown setting \"bogus\""), "{error}");
    let webhook = [
        "--log-format",
        "json",
        "--dev-auth",
        "--webhook-url",
        "http://127.0.0.1:9/hook",
        "--webhook-secret",
        "abc",
    ];
    let error = run(&webhook, None);
    assert!(error.contains("at least 16"), "{error}");
    let mut viewing = webhook.to_vec();
    viewing.pop();
    viewing.extend([HOOK_SECRET_16, "--webhook-events", "connected,viewing"]);
    let error = run(&viewing, None);
    assert!(error.contains("--viewing-events"), "{error}");
    // Plain text stays plain text.
    let out = Command::new(env!("CARGO_BIN_EXE_presence-server"))
        .env_remove("PRESENCE_LOG_FORMAT")
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("Error: no authentication configured"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `compose.yaml` (no Docker engine runs where the tests do, so it is read, not run): it parses,
/// its nodes build from the Dockerfile beside it, every flag and environment variable they set
/// is one `--help` knows, node ids and host ports are unique, the Redis seeds are exactly the
/// Redis services' addresses, and the one-shot job creates the cluster from all of them.
#[test]
fn the_compose_file_parses_and_names_what_exists() {
    use yaml_rust2::{Yaml, YamlLoader};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("compose.yaml")).expect("compose.yaml");
    let docs = YamlLoader::load_from_str(&text).expect("compose.yaml is YAML");
    let services = docs[0]["services"].as_hash().expect("a services map");
    // A `<<: *anchor` merge, by hand: the service's own keys win.
    let get = |svc: &Yaml, key: &str| -> Yaml {
        match &svc[key] {
            Yaml::BadValue => svc["<<"][key].clone(),
            own => own.clone(),
        }
    };
    let help = Command::new(env!("CARGO_BIN_EXE_presence-server"))
        .arg("--help")
        .output()
        .expect("--help runs");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let strings = |y: &Yaml| -> Vec<String> {
        y.as_vec()
            .map(|v| {
                v.iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut redis = std::collections::BTreeSet::new();
    let mut seeds = std::collections::BTreeSet::new();
    let (mut ids, mut ports, mut nodes) = (Vec::new(), Vec::new(), 0);
    for (name, svc) in services {
        let name = name.as_str().expect("service names are strings");
        if strings(&get(svc, "command"))
            .iter()
            .any(|a| a == "--cluster-enabled")
        {
            let ip = svc["networks"]["presence"]["ipv4_address"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has a fixed address"));
            redis.insert(format!("{ip}:6379"));
        }
        if get(svc, "build").as_str() != Some(".") {
            continue;
        }
        nodes += 1;
        assert!(
            root.join("Dockerfile").exists(),
            "{name} builds the Dockerfile"
        );
        let args = strings(&get(svc, "command"));
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                help.contains(&format!("{flag} ")),
                "{name}: {flag} is a flag"
            );
        }
        let id = args.iter().skip_while(|a| *a != "--node-id").nth(1);
        ids.push(
            id.unwrap_or_else(|| panic!("{name} has a --node-id"))
                .clone(),
        );
        ports.extend(strings(&svc["ports"]));
        let env = get(svc, "environment");
        for (key, value) in env.as_hash().expect("node environment") {
            let key = key.as_str().expect("variable names are strings");
            assert!(
                ['=', ']']
                    .iter()
                    .any(|end| help.contains(&format!("[env: {key}{end}"))),
                "{name}: {key} is read"
            );
            if key == "PRESENCE_REDIS_CLUSTER" {
                seeds.extend(
                    value
                        .as_str()
                        .unwrap_or_default()
                        .split(',')
                        .map(str::to_owned),
                );
            }
        }
    }
    assert_eq!(nodes, 3, "three nodes");
    assert_eq!(redis.len(), 3, "three Redis masters");
    assert_eq!(seeds, redis, "the seeds are the Redis services");
    let unique = |v: &Vec<String>| v.iter().collect::<std::collections::BTreeSet<_>>().len();
    assert_eq!(unique(&ids), ids.len(), "node ids are unique: {ids:?}");
    assert_eq!(
        unique(&ports),
        ports.len(),
        "host ports are unique: {ports:?}"
    );
    let init = strings(&services[&Yaml::String("redis-init".into())]["command"]).join(" ");
    assert!(init.contains("--cluster create"), "{init}");
    for addr in &redis {
        assert!(
            init.contains(addr.as_str()),
            "the cluster is created with {addr}"
        );
    }
}
