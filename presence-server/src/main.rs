//! The `presence-server` binary: flags and tracing; the library does the rest.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use presence_server::{
    ClusterConfig, DataDir, DefaultAudience, DevAuth, JwtAuth, PresenceServer, RedisBackend,
    RedisConfig, ServerConfig, WebhookConfig,
};
use tracing_subscriber::EnvFilter;

/// A presence server: who is online, active, idle or typing, over WebSocket.
#[derive(Parser, Debug)]
#[command(version, about, args_override_self = true)]
struct Args {
    /// A TOML file of settings, named like the flags (`bind = "0.0.0.0:4000"`,
    /// `heartbeat-interval-ms = 25000`); environment variables and flags override it.
    #[arg(long, env = "PRESENCE_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Address to listen on, `HOST:PORT` (a name such as `localhost` binds its first address
    /// that can be bound).
    #[arg(long, env = "PRESENCE_BIND", default_value = "127.0.0.1:4000", value_parser = parse_bind)]
    bind: String,
    /// HMAC secret that signs user tokens (`sub` = user id, `exp` required).
    #[arg(long, env = "PRESENCE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// A file holding the HMAC secret (trailing whitespace is ignored).
    #[arg(long, env = "PRESENCE_JWT_SECRET_FILE")]
    jwt_secret_file: Option<std::path::PathBuf>,
    /// The issuer's PEM public key, for RS*/PS*/ES* tokens.
    #[arg(long, env = "PRESENCE_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<std::path::PathBuf>,
    /// The one algorithm tokens must use: HS256/384/512 with a secret (default HS256),
    /// RS256/384/512, PS256/384/512 or ES256/384 with a public key (default RS256).
    #[arg(long, env = "PRESENCE_JWT_ALGORITHM", value_parser = parse_algorithm)]
    jwt_algorithm: Option<jsonwebtoken::Algorithm>,
    /// Require this `aud` in every token.
    #[arg(long, env = "PRESENCE_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Require this `iss` in every token.
    #[arg(long, env = "PRESENCE_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// What a token without `rooms`/`watch` claims may join and watch: `open` (anything) or
    /// `none`. Default: `none` with JWTs, `open` with --dev-auth.
    #[arg(long, env = "PRESENCE_DEFAULT_AUDIENCE", value_enum)]
    default_audience: Option<Audience>,
    /// DEVELOPMENT ONLY: accept the plain user name as the token. Anyone can be anyone.
    #[arg(long, env = "PRESENCE_DEV_AUTH")]
    dev_auth: bool,
    /// Key that lets a backend read every user's presence over HTTP (`Authorization: Bearer <key>`).
    #[arg(long, env = "PRESENCE_SERVICE_KEY", hide_env_values = true)]
    service_key: Option<String>,
    /// How often clients ping, in ms.
    #[arg(long, env = "PRESENCE_HEARTBEAT_INTERVAL_MS", default_value_t = 25_000)]
    heartbeat_interval_ms: u64,
    /// Silence after which a connection counts as dropped, in ms.
    #[arg(long, env = "PRESENCE_HEARTBEAT_TIMEOUT_MS", default_value_t = 70_000)]
    heartbeat_timeout_ms: u64,
    /// Grace after a drop before observers see the user offline, in ms.
    #[arg(long, env = "PRESENCE_OFFLINE_GRACE_MS", default_value_t = 10_000)]
    offline_grace_ms: u64,
    /// Grace after a clean "leaving" (page reload), in ms.
    #[arg(long, env = "PRESENCE_LEAVE_GRACE_MS", default_value_t = 2_000)]
    leave_grace_ms: u64,
    /// Input-free time after which clients report idle, in ms.
    #[arg(long, env = "PRESENCE_IDLE_AFTER_MS", default_value_t = 60_000)]
    idle_after_ms: u64,
    /// Typing indicator lifetime without a refresh, in ms.
    #[arg(long, env = "PRESENCE_TYPING_TTL_MS", default_value_t = 6_000)]
    typing_ttl_ms: u64,
    /// Window in which changes are coalesced into one frame per room, in ms (0 = none).
    #[arg(long, env = "PRESENCE_BATCH_WINDOW_MS", default_value_t = 25)]
    batch_window_ms: u64,
    /// No input on any of a user's devices for this long, in ms, and `notify` says push.
    #[arg(long, env = "PRESENCE_NOTIFY_IDLE_MS", default_value_t = 120_000)]
    notify_idle_ms: u64,
    /// Host events (the feed, the cluster's stream, webhooks) carry view changes (`viewing`): each
    /// time a connection's page shows another room. Frequent, so off.
    #[arg(long, env = "PRESENCE_VIEWING_EVENTS")]
    viewing_events: bool,
    /// Frames queued per connection before it is closed as a slow consumer.
    #[arg(long, env = "PRESENCE_OUTBOUND_QUEUE", default_value_t = 256)]
    outbound_queue: usize,
    /// A room with this many online members is large: counts and a summary per interval instead
    /// of every change (small again below 80 % of it).
    #[arg(long, env = "PRESENCE_LARGE_ROOM_MEMBERS", default_value_t = 1_000)]
    large_room_members: usize,
    /// A large room's summaries go at most this often, in ms.
    #[arg(long, env = "PRESENCE_LARGE_ROOM_INTERVAL_MS", default_value_t = 1_000)]
    large_room_interval_ms: u64,
    /// Run as one node of several sharing this Redis (e.g. `redis://127.0.0.1:6379`). Default: a single node in memory.
    #[arg(long, env = "PRESENCE_REDIS_URL", conflicts_with = "redis_cluster")]
    redis_url: Option<String>,
    /// Run as one node of several sharing this Redis Cluster: seed nodes as `HOST:PORT[,HOST:PORT...]`.
    #[arg(long, env = "PRESENCE_REDIS_CLUSTER", value_delimiter = ',')]
    redis_cluster: Option<Vec<String>>,
    /// Prefix of every Redis key and channel; all nodes of a cluster use the same.
    #[arg(long, env = "PRESENCE_REDIS_PREFIX", default_value = "presence")]
    redis_prefix: String,
    /// This node's id in the cluster; keep it across restarts (default: random).
    #[arg(long, env = "PRESENCE_NODE_ID")]
    node_id: Option<String>,
    /// Lease TTL in ms: a dead node's users go offline elsewhere after at most 4/3 of this.
    #[arg(long, env = "PRESENCE_LEASE_TTL_MS", default_value_t = 5_000)]
    lease_ttl_ms: u64,
    /// Shards of the cluster's event stream in Redis (`<prefix>:{e:0}` ...); all nodes use the same.
    /// 0: no stream (each node's feed and webhooks carry only its own writes' changes).
    #[arg(long, env = "PRESENCE_EVENT_SHARDS", default_value_t = 8)]
    event_shards: u16,
    /// Events the cluster's event stream keeps, over all shards (older ones get `event: gap`).
    #[arg(long, env = "PRESENCE_EVENT_RETENTION", default_value_t = 100_000)]
    event_retention: usize,
    /// Events older than this many seconds leave the cluster's event stream.
    #[arg(long, env = "PRESENCE_EVENT_MAX_AGE_S", default_value_t = 3_600)]
    event_max_age_s: u64,
    /// Keep user state (status, text, last seen, read markers) in this directory, so a restart
    /// loses at most the last batch window of changes. Default: in memory (single node) or Redis.
    /// Empty: none.
    #[arg(long, env = "PRESENCE_DATA_DIR")]
    data_dir: Option<std::ffi::OsString>,
    /// Forget offline users (status, text, last seen, markers) this many days after they left.
    #[arg(long, env = "PRESENCE_RETENTION_DAYS", default_value_t = 30)]
    retention_days: u64,
    /// Remember at most this many offline users; the longest gone are forgotten first.
    #[arg(long, env = "PRESENCE_MAX_OFFLINE_USERS", default_value_t = 1_000_000)]
    max_offline_users: usize,
    /// Largest `data` object a client may set, compact, in bytes (at most 4096).
    #[arg(long, env = "PRESENCE_MAX_DATA_BYTES", default_value_t = 1024)]
    max_data_bytes: usize,
    /// Frames a connection may send in a burst before `rate_limited`.
    #[arg(long, env = "PRESENCE_RATE_BURST", default_value_t = 40)]
    rate_burst: u32,
    /// Frames per second a connection's burst refills at.
    #[arg(long, env = "PRESENCE_RATE_PER_SECOND", default_value_t = 20.0)]
    rate_per_second: f64,
    /// Debt, in bursts, after which a flooding connection is closed with 1008.
    #[arg(long, env = "PRESENCE_RATE_ABUSE_FACTOR", default_value_t = 10)]
    rate_abuse_factor: u32,
    /// Time a new socket has to send its `hello`, in ms.
    #[arg(long, env = "PRESENCE_HELLO_TIMEOUT_MS", default_value_t = 10_000)]
    hello_timeout_ms: u64,
    /// POST presence events, signed and batched, to this endpoint, http:// or https://
    /// (repeatable, or comma-separated).
    #[arg(long, env = "PRESENCE_WEBHOOK_URL", value_delimiter = ',')]
    webhook_url: Vec<String>,
    /// Secret webhook requests are signed with (HMAC-SHA256 over `<timestamp>.<body>`).
    #[arg(long, env = "PRESENCE_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// File holding the webhook secret (trailing newline ignored).
    #[arg(long, env = "PRESENCE_WEBHOOK_SECRET_FILE")]
    webhook_secret_file: Option<std::path::PathBuf>,
    /// Event kinds webhooks carry: connected, disconnected, idle, active, status, typing, read, data,
    /// viewing (needs --viewing-events).
    #[arg(
        long,
        env = "PRESENCE_WEBHOOK_EVENTS",
        value_delimiter = ',',
        default_value = "connected,disconnected,idle,active,status"
    )]
    webhook_events: Vec<String>,
    /// Events within this many ms go out in one webhook request.
    #[arg(long, env = "PRESENCE_WEBHOOK_WINDOW_MS", default_value_t = 1_000)]
    webhook_window_ms: u64,
    /// A webhook request that takes longer than this many ms is retried.
    #[arg(long, env = "PRESENCE_WEBHOOK_TIMEOUT_MS", default_value_t = 5_000)]
    webhook_timeout_ms: u64,
    /// Events queued per webhook endpoint at most; more are dropped and counted.
    #[arg(long, env = "PRESENCE_WEBHOOK_QUEUE", default_value_t = 10_000)]
    webhook_queue: usize,
    /// PEM file of a private CA that https:// webhook endpoints may be signed by (besides the
    /// system's roots).
    #[arg(long, env = "PRESENCE_WEBHOOK_CA_FILE")]
    webhook_ca_file: Option<std::path::PathBuf>,
    /// Log filter, RUST_LOG syntax (e.g. `info,presence_server=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Ask the server listening on `--bind` for `/healthz` and exit 0 if it answers 200 (for
    /// container health checks; nothing else runs).
    #[arg(long)]
    healthcheck: bool,
    /// `text` (colours only on a terminal) or `json` (one object per line, for log collectors).
    #[arg(long, env = "PRESENCE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Audience {
    Open,
    None,
}

/// `HOST:PORT`, the port a number; the host is resolved when the listener binds.
fn parse_bind(s: &str) -> Result<String, String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| {
        format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:4000, localhost:4000, [::1]:4000)")
    })?;
    if host.is_empty() {
        return Err(format!(
            "{s:?} has no host (e.g. 0.0.0.0{s} for every interface)"
        ));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{s:?}: the port {port:?} is not a number from 0 to 65535"))?;
    Ok(s.to_owned())
}

/// The addresses `--bind` names, in the resolver's order.
async fn bind_addrs(bind: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let lookup = tokio::net::lookup_host(bind);
    let addrs: Vec<SocketAddr> = tokio::time::timeout(Duration::from_secs(5), lookup)
        .await
        .with_context(|| format!("--bind {bind}: resolving took over 5 s"))?
        .with_context(|| format!("--bind {bind}: the host does not resolve"))?
        .collect();
    if addrs.is_empty() {
        bail!("--bind {bind}: the host resolves to no address");
    }
    Ok(addrs)
}

/// A listener on the first of `--bind`'s addresses that can be bound.
async fn listen(bind: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in bind_addrs(bind).await? {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(anyhow::Error::new(e).context(format!("binding {addr}"))),
        }
    }
    let error = last.unwrap_or_else(|| anyhow::anyhow!("no address"));
    Err(error.context(format!("--bind {bind}")))
}

fn parse_algorithm(s: &str) -> Result<jsonwebtoken::Algorithm, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a JWT algorithm (HS256, RS256, ES256, ...)"))
}

/// The webhooks the flags describe, if any endpoint is given.
fn webhooks(args: &Args) -> anyhow::Result<Option<WebhookConfig>> {
    if args.webhook_url.is_empty() {
        return Ok(None);
    }
    let secret = match (&args.webhook_secret, &args.webhook_secret_file) {
        (Some(_), Some(_)) => bail!("give --webhook-secret or --webhook-secret-file, not both"),
        (Some(s), None) => s.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("--webhook-secret-file {}", file.display()))?
            .trim_end()
            .to_owned(),
        (None, None) => bail!("--webhook-url needs --webhook-secret or --webhook-secret-file"),
    };
    let mut w = WebhookConfig::new(args.webhook_url.clone(), secret);
    w.kinds = args.webhook_events.clone();
    w.window = Duration::from_millis(args.webhook_window_ms);
    w.timeout = Duration::from_millis(args.webhook_timeout_ms);
    w.queue = args.webhook_queue;
    w.ca_file = args.webhook_ca_file.clone();
    w.validate().context("--webhook-*")?;
    Ok(Some(w))
}

/// Fails at start-up, clearly, when a webhook host does not resolve.
async fn check_webhook_hosts(w: &WebhookConfig) -> anyhow::Result<()> {
    for url in &w.urls {
        let uri: axum::http::Uri = url
            .parse()
            .with_context(|| format!("--webhook-url {url}"))?;
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let found = match tokio::time::timeout(Duration::from_secs(5), lookup).await {
            Ok(Ok(addrs)) => addrs.count() > 0,
            Ok(Err(_)) => false,
            Err(_) => bail!("--webhook-url {url}: resolving {host:?} took over 5 s"),
        };
        if !found {
            bail!("--webhook-url {url}: host {host:?} does not resolve");
        }
    }
    Ok(())
}

/// The authenticator the flags describe.
fn jwt_auth(args: &Args) -> anyhow::Result<Option<JwtAuth>> {
    use jsonwebtoken::Algorithm;
    let secret = match (&args.jwt_secret, &args.jwt_secret_file) {
        (Some(_), Some(_)) => bail!("give --jwt-secret or --jwt-secret-file, not both"),
        (Some(s), None) => Some(s.clone()),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("--jwt-secret-file {}", file.display()))?
                .trim_end()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let auth = match (secret, &args.jwt_public_key) {
        (Some(_), Some(_)) => bail!("give a JWT secret or --jwt-public-key, not both"),
        (Some(secret), None) => {
            let alg = args.jwt_algorithm.unwrap_or(Algorithm::HS256);
            JwtAuth::hmac(alg, secret.as_bytes()).context("--jwt-secret")?
        }
        (None, Some(file)) => {
            let pem = std::fs::read(file)
                .with_context(|| format!("--jwt-public-key {}", file.display()))?;
            let alg = args.jwt_algorithm.unwrap_or(Algorithm::RS256);
            JwtAuth::public_key(alg, &pem).context("--jwt-public-key")?
        }
        (None, None) => return Ok(None),
    };
    let auth = match &args.jwt_audience {
        Some(aud) => auth.audience(aud),
        None => auth,
    };
    let auth = match &args.jwt_issuer {
        Some(iss) => auth.issuer(iss),
        None => auth,
    };
    let default = match args.default_audience.unwrap_or(Audience::None) {
        Audience::Open => {
            tracing::warn!(
                "!!! --default-audience open: a valid token without rooms/watch claims may join any room and watch anyone !!!"
            );
            DefaultAudience::Open
        }
        Audience::None => DefaultAudience::None,
    };
    Ok(Some(auth.default_audience(default)))
}

/// Settings that exclude each other: one of a group given by a flag or an environment variable
/// overrides the file's settings of the whole group (`PRESENCE_JWT_SECRET` over a file's
/// `jwt-secret-file`), rather than meeting them in a "not both" error.
const ALTERNATIVES: &[&[&str]] = &[
    &[
        "jwt-secret",
        "jwt-secret-file",
        "jwt-public-key",
        "dev-auth",
    ],
    &["webhook-secret", "webhook-secret-file"],
    &["redis-url", "redis-cluster"],
];

/// The command line with the `--config` file's settings put in front, so
/// flags (which come later, and override) and environment variables (whose
/// settings, and their [`ALTERNATIVES`], are left out of the file's) win over the file.
fn with_config_file(argv: Vec<std::ffi::OsString>) -> anyhow::Result<Vec<std::ffi::OsString>> {
    use clap::CommandFactory;
    let path = argv
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| argv.get(i + 1).cloned())
        .or_else(|| {
            argv.iter().find_map(|a| {
                a.to_str()?
                    .strip_prefix("--config=")
                    .map(std::ffi::OsString::from)
            })
        })
        .or_else(|| std::env::var_os("PRESENCE_CONFIG"));
    let Some(path) = path else {
        return Ok(argv);
    };
    let shown = std::path::Path::new(&path).display().to_string();
    let text = std::fs::read_to_string(&path).with_context(|| format!("--config {shown}"))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("--config {shown}: not valid TOML"))?;
    let command = Args::command();
    let given_outside = |name: &str| {
        let flag = format!("--{name}");
        let env = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name))
            .and_then(|a| a.get_env());
        env.is_some_and(|env| std::env::var_os(env).is_some())
            || argv.iter().skip(1).any(|a| {
                a.to_str().is_some_and(|a| {
                    a == flag
                        || a.strip_prefix(flag.as_str())
                            .is_some_and(|v| v.starts_with('='))
                })
            })
    };
    let mut out: Vec<std::ffi::OsString> = argv.iter().take(1).cloned().collect();
    for (key, value) in table {
        let name = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && name != "config")
            .with_context(|| format!("--config {shown}: unknown setting {key:?}"))?;
        let group = ALTERNATIVES
            .iter()
            .find(|g| g.contains(&name.as_str()))
            .map_or(&[][..], |g| *g);
        let overridden = arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some())
            || group.iter().any(|other| given_outside(other));
        if overridden {
            continue;
        }
        let value = match value {
            toml::Value::Boolean(true) if arg.get_num_args().is_some_and(|n| n.takes_values()) => {
                "true".to_owned()
            }
            toml::Value::Boolean(true) => {
                out.push(format!("--{name}").into());
                continue;
            }
            toml::Value::Boolean(false) => continue,
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Array(items) => {
                for item in items {
                    let toml::Value::String(v) = item else {
                        bail!("--config {shown}: {key} must be a list of strings");
                    };
                    out.push(format!("--{name}={v}").into());
                }
                continue;
            }
            other => bail!("--config {shown}: {key} = {other} is not a string, number or boolean"),
        };
        out.push(format!("--{name}={value}").into());
    }
    out.extend(argv.into_iter().skip(1));
    Ok(out)
}

/// `GET /healthz` on the local listener; an error unless it answers 200.
async fn healthcheck(bind: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr = bind_addrs(bind).await?[0];
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let check = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).await?;
        anyhow::Ok(head.ends_with(b" 200"))
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => bail!("{addr}/healthz did not answer 200"),
        Ok(Err(e)) => bail!("{addr}/healthz: {e}"),
        Err(_) => bail!("{addr}/healthz: no answer within 3 s"),
    }
}

/// Whether errors before the log is set up are written as JSON: `--log-format json` on the
/// command line or in `PRESENCE_LOG_FORMAT` (a config file's setting counts once it is read).
fn json_asked(argv: &[std::ffi::OsString]) -> bool {
    let args: Vec<&str> = argv.iter().filter_map(|a| a.to_str()).collect();
    let flag = args.iter().enumerate().rev().find_map(|(i, a)| match *a {
        "--log-format" => args.get(i + 1).copied(),
        _ => a.strip_prefix("--log-format="),
    });
    let env = std::env::var("PRESENCE_LOG_FORMAT").ok();
    flag.or(env.as_deref()) == Some("json")
}

/// One start-up error as a log line: through the `json` log format (set up here if it is not
/// yet), or as plain text.
fn report(error: &anyhow::Error, json: bool) {
    if json {
        let _ = tracing_subscriber::fmt().json().try_init();
        tracing::error!(error = %format!("{error:#}"), "cannot start");
    } else {
        eprintln!("Error: {error:#}");
    }
}

fn main() -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut json = json_asked(&argv);
    let args = with_config_file(argv).and_then(|argv| match Args::try_parse_from(argv) {
        Ok(args) => Ok(args),
        // --help and --version print and exit 0 as clap does.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) if !json => e.exit(),
        Err(e) => Err(anyhow::anyhow!("{}", e.render().to_string().trim_end())),
    });
    let result = args.and_then(|args| {
        json = args.log_format == LogFormat::Json;
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(run(args))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            report(&error, json);
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    // `PRESENCE_DATA_DIR=` (empty) means none, so an image's default can be
    // switched off for a cluster node.
    args.data_dir = args.data_dir.filter(|d| !d.is_empty());
    if args.healthcheck {
        return healthcheck(&args.bind).await;
    }
    let filter = EnvFilter::try_new(&args.log).context("--log")?;
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => {
            use std::io::IsTerminal;
            logs.with_ansi(std::io::stdout().is_terminal()).init()
        }
    }

    let mut config = ServerConfig::default();
    let ms = Duration::from_millis;
    config.timing.heartbeat_interval = ms(args.heartbeat_interval_ms);
    config.timing.heartbeat_timeout = ms(args.heartbeat_timeout_ms);
    config.timing.offline_grace = ms(args.offline_grace_ms);
    config.timing.leave_grace = ms(args.leave_grace_ms);
    config.timing.idle_after = ms(args.idle_after_ms);
    config.timing.typing_ttl = ms(args.typing_ttl_ms);
    config.batch_window = ms(args.batch_window_ms);
    config.outbound_queue = args.outbound_queue;
    config.large_room_members = args.large_room_members;
    config.large_room_interval = ms(args.large_room_interval_ms);
    config.notify_idle_after = ms(args.notify_idle_ms);
    config.viewing_events = args.viewing_events;
    config.service_key = args.service_key.clone();
    config.rate.burst = args.rate_burst;
    config.rate.per_second = args.rate_per_second;
    config.rate.abuse_factor = args.rate_abuse_factor;
    config.hello_timeout = ms(args.hello_timeout_ms);
    config.max_data_bytes = args.max_data_bytes;
    config.retention.keep_for = Duration::from_secs(args.retention_days.saturating_mul(86_400));
    config.retention.max_offline = args.max_offline_users;

    let builder = PresenceServer::builder().config(config);
    let builder = match (jwt_auth(&args)?, args.dev_auth) {
        (Some(_), true) => bail!("give either a JWT key or --dev-auth, not both"),
        (Some(auth), false) => builder.auth(auth),
        (None, true) => {
            if args.default_audience == Some(Audience::None) {
                bail!(
                    "--default-audience none needs tokens with claims: use a JWT key, not --dev-auth"
                );
            }
            tracing::warn!("!!! --dev-auth: the token IS the user name; anyone can be anyone !!!");
            tracing::warn!("!!! development mode: never expose this server to real users !!!");
            builder.auth(DevAuth)
        }
        (None, false) => {
            bail!(
                "no authentication configured: give --jwt-secret, --jwt-secret-file or --jwt-public-key, or --dev-auth for local development"
            )
        }
    };
    let hooks = webhooks(&args)?;
    if let Some(w) = &hooks {
        check_webhook_hosts(w).await?;
    }
    let redis = match (args.redis_url, args.redis_cluster) {
        (Some(url), _) => Some((RedisConfig::single(url), "--redis-url")),
        (None, Some(seeds)) => Some((RedisConfig::cluster(seeds), "--redis-cluster")),
        (None, None) => None,
    };
    let clustered = redis.is_some();
    let builder = match redis {
        Some((mut redis, flag)) => {
            redis.prefix = args.redis_prefix.clone();
            let mut cluster = ClusterConfig::default();
            if let Some(id) = args.node_id {
                cluster.node_id = id;
            }
            cluster.lease_ttl = ms(args.lease_ttl_ms);
            cluster.event_shards = args.event_shards;
            cluster.event_retention = args.event_retention;
            cluster.event_max_age = std::time::Duration::from_secs(args.event_max_age_s);
            cluster
                .validate()
                .context("--node-id / --lease-ttl-ms / --event-*")?;
            tracing::info!(node = %cluster.node_id, prefix = %redis.prefix, "cluster mode over Redis ({flag})");
            let backend = RedisBackend::new(redis).context(flag)?;
            builder.cluster(std::sync::Arc::new(backend), cluster)
        }
        None => builder,
    };
    let builder = match (&args.data_dir, clustered) {
        (Some(_), true) => bail!(
            "give --data-dir or --redis-url/--redis-cluster, not both: with Redis the user state lives in Redis"
        ),
        (Some(dir), false) => {
            let data = DataDir::open(dir).context("--data-dir")?;
            tracing::info!(file = %data.path().display(), "user state kept on disk");
            builder.data_dir(data)
        }
        (None, true) => builder,
        (None, false) => {
            tracing::warn!(
                "user state (status, text, last seen, read markers) lives in memory: a restart forgets it; give --data-dir to keep it"
            );
            builder
        }
    };
    let builder = match hooks {
        Some(w) => {
            tracing::info!(endpoints = w.urls.len(), kinds = ?w.kinds, "webhooks on");
            builder.webhooks(w)
        }
        None => builder,
    };
    let server = builder.build()?;
    let listener = listen(&args.bind).await?;
    tracing::info!(addr = %listener.local_addr()?, "presence server listening");
    server
        .serve(listener, presence_server::shutdown_signal())
        .await?;
    tracing::info!("drained; bye");
    Ok(())
}
