//! Gateway configuration: one TOML file, every key optional with a default, unknown keys
//! refused. Flags override the file; `CHAT_TOKEN_SECRET` overrides the secret.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_protocol::AckPolicy;
use serde::{Deserialize, Serialize};

use crate::plugins::PluginSpec;
use crate::redis_target::RedisTarget;
use crate::unread::FlushPolicy;

mod check;

pub use check::{Problem, check};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Where the embedded store, the generated certificate and the token secret live.
    pub data_dir: PathBuf,
    /// Keep groups, logs and cursors in this Redis (`redis://HOST:PORT`) instead of the
    /// embedded store. Unset: the embedded store in `data_dir`.
    pub redis: Option<String>,
    /// Seed nodes of a Redis Cluster (`["redis://HOST:PORT", ...]`) to keep them in
    /// instead; the rest of the cluster is found from them. Exclusive with `redis`.
    pub redis_cluster: Vec<String>,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub delivery: DeliveryConfig,
    pub transport: TransportConfig,
    pub unread: UnreadConfig,
    pub offline: OfflineConfig,
    pub drain: DrainConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    /// The plugin chain, in order. Unset: the bundled delete-filter, private-messages and
    /// ack-batching; `plugins = []` runs none.
    pub plugins: Option<Vec<PluginSpec>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key`. Unset: a self-signed certificate in `<data_dir>/tls/`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HMAC secret for tokens. Unset: `CHAT_TOKEN_SECRET`, else `<data_dir>/token.secret`.
    pub token_secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Receivers may hold an ACK back this long to batch it. Five seconds by default: on a
    /// live connection QUIC already delivers every push, so an ACK only moves the device's
    /// resume cursor, and the delay bounds what a reconnect sends again (docs/protocol.md
    /// §7); a shorter one costs an ACK packet, a wake-up and a cursor write per member
    /// and delay in every busy group.
    pub ack_delay_ms: u32,
    /// Receivers ACK at once when this many pushes are waiting.
    pub ack_batch: u16,
    /// A push not acknowledged within this time is sent again.
    pub retransmit_ms: u32,
    /// Most unacknowledged pushes per connection; past it, the connection is caught up from the log.
    pub window: usize,
    /// Live pushes held for a connection between its registration and its `Welcome`; past
    /// them it catches everything up from the log instead.
    pub queue: usize,
    /// What a connection gets for a group its app keeps in the background (`Focus`).
    pub background: Background,
    /// Least time between two `Activity` frames to one connection.
    pub activity_ms: u32,
}

/// Delivery of groups the app keeps in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Background {
    /// Compact `Activity` notices (group, latest seq, messages pending), at most one frame
    /// per `activity_ms`; the bodies follow when the app brings the group to the foreground.
    Compact,
    /// Every push in full, as for the foreground (`Focus` is accepted and has no effect).
    Full,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// A connection silent this long is closed (clients send keep-alives every 10 s).
    pub idle_timeout_s: u64,
    /// Per-stream receive window.
    pub stream_window_kb: u32,
    /// Per-connection receive and send windows.
    pub conn_window_kb: u32,
    /// Time allowed from the QUIC handshake to a valid `Hello`.
    pub hello_timeout_s: u64,
    /// UDP socket receive and send buffers asked for (the kernel caps them at
    /// `net.core.rmem_max` / `wmem_max`). Small buffers drop datagrams under fan-out bursts.
    pub udp_buffer_kb: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Async worker threads; 0: one per core.
    pub worker_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4433".parse().expect("valid address"),
            data_dir: PathBuf::from("data"),
            redis: None,
            redis_cluster: Vec::new(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            delivery: DeliveryConfig::default(),
            transport: TransportConfig::default(),
            unread: UnreadConfig::default(),
            offline: OfflineConfig::default(),
            drain: DrainConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            runtime: RuntimeConfig::default(),
            plugins: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnreadConfig {
    /// Staged unread increments are written at least this often (the counts' staleness).
    pub flush_ms: u64,
    /// A group's staged messages are written at once when this many are waiting.
    pub flush_at: usize,
}

impl Default for UnreadConfig {
    fn default() -> Self {
        let policy = FlushPolicy::default();
        Self {
            flush_ms: policy.every.as_millis() as u64,
            flush_at: policy.at,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineConfig {
    /// Groups kept in each user's offline buffer (references only). Past it the oldest
    /// are evicted and a device that may have missed them reads every group's head.
    pub capacity: usize,
    /// Most messages of one group pushed to a device on connect; the older ones are
    /// announced with `Skipped` for the client to fetch from history.
    pub max_catch_up: u64,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        Self {
            capacity: FlushPolicy::default().offline_capacity,
            max_catch_up: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// On SIGTERM, clients get this long to move before the gateway closes what is left.
    pub deadline_s: u64,
    /// Another gateway (`host:port`) named to clients in `GoAway`; unset: none named.
    pub server: Option<String>,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            deadline_s: 30,
            server: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin HTTP API (health, metrics, plugins, drain).
    pub enabled: bool,
    /// TCP address of the admin API. Anywhere but loopback it requires `token`.
    pub listen: SocketAddr,
    /// Bearer token the admin API requires (all but `/health` and `/ready`).
    /// Unset: `CHAT_ADMIN_TOKEN`; unset there too, no token (loopback only).
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9464".parse().expect("valid address"),
            token: None,
        }
    }
}

impl AdminConfig {
    /// The token: config, then `CHAT_ADMIN_TOKEN`.
    pub fn token(&self) -> Option<String> {
        self.token.clone().or_else(|| {
            std::env::var("CHAT_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or per-module directives
    /// (`info,chat_gateway::plugins=debug`). `CHAT_LOG` overrides it.
    pub level: String,
    /// `text` for people, `json` (one object per line) for log shippers.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// A level (`info`), or directives (`info,chat_gateway::plugins=debug`). A lone word must
/// be a level: a typo would otherwise pass as a module name and silence every log.
fn valid_log_filter(filter: &str) -> bool {
    if filter.contains(['=', ',']) {
        tracing_subscriber::EnvFilter::try_new(filter).is_ok()
    } else {
        filter
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .is_ok()
    }
}

impl Config {
    /// When staged unread counts and offline references are written.
    pub fn flush_policy(&self) -> FlushPolicy {
        FlushPolicy {
            every: Duration::from_millis(self.unread.flush_ms),
            at: self.unread.flush_at,
            offline_capacity: self.offline.capacity,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            ack_delay_ms: 5_000,
            ack_batch: 64,
            retransmit_ms: 15_000,
            window: 1024,
            queue: 1024,
            background: Background::Compact,
            activity_ms: 1000,
        }
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            idle_timeout_s: 30,
            stream_window_kb: 64,
            conn_window_kb: 256,
            hello_timeout_s: 10,
            udp_buffer_kb: 4096,
        }
    }
}

impl DeliveryConfig {
    /// The live ACK policy when no plugin sets one.
    pub fn ack_policy(&self) -> AckPolicy {
        AckPolicy {
            max_delay_ms: self.ack_delay_ms,
            max_batch: self.ack_batch,
            retransmit_ms: self.retransmit_ms,
        }
    }
}

impl Config {
    /// The plugins to load: the configured chain, or the bundled defaults.
    pub fn plugin_specs(&self) -> Vec<PluginSpec> {
        self.plugins.clone().unwrap_or_else(PluginSpec::defaults)
    }

    /// The Redis deployment to share state through, if any (else the embedded store).
    pub fn redis_target(&self) -> Option<RedisTarget> {
        match &self.redis {
            Some(url) => Some(RedisTarget::Server(url.clone())),
            None if !self.redis_cluster.is_empty() => {
                Some(RedisTarget::Cluster(self.redis_cluster.clone()))
            }
            None => None,
        }
    }
}

/// Longest a catch-up ACK is held back when no plugin sets the policy.
const CATCH_UP_ACK_DELAY_MS: u32 = 200;

impl DeliveryConfig {
    /// The catch-up ACK policy when no plugin sets one: the live one, batching more and
    /// held at most `CATCH_UP_ACK_DELAY_MS` (catch-up ACKs make room in the window).
    pub fn catch_up_ack_policy(&self) -> AckPolicy {
        let live = self.ack_policy();
        AckPolicy {
            max_delay_ms: live.max_delay_ms.min(CATCH_UP_ACK_DELAY_MS),
            max_batch: live.max_batch.saturating_mul(4),
            ..live
        }
    }
}

impl TransportConfig {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }
}

impl Config {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The first problem of [`Config::problems`], if any.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some((key, message)) => Err(ConfigError::Invalid(format!("{key}: {message}"))),
            None => Ok(()),
        }
    }

    /// Every inconsistency among the values, each as (dotted key, what is wrong).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, ok: bool, message: String| {
            if !ok {
                problems.push((key.to_owned(), message));
            }
        };
        let d = &self.delivery;
        problem(
            "delivery.retransmit_ms",
            d.retransmit_ms > d.ack_delay_ms,
            format!(
                "must exceed delivery.ack_delay_ms ({}), or every push is sent twice",
                d.ack_delay_ms
            ),
        );
        for (key, value) in [
            ("delivery.ack_batch", usize::from(d.ack_batch)),
            ("delivery.window", d.window),
            ("delivery.queue", d.queue),
            ("delivery.activity_ms", d.activity_ms as usize),
            ("offline.capacity", self.offline.capacity),
            ("offline.max_catch_up", self.offline.max_catch_up as usize),
            ("unread.flush_ms", self.unread.flush_ms as usize),
            ("unread.flush_at", self.unread.flush_at),
            (
                "transport.idle_timeout_s",
                self.transport.idle_timeout_s as usize,
            ),
            (
                "transport.hello_timeout_s",
                self.transport.hello_timeout_s as usize,
            ),
        ] {
            problem(key, value > 0, "must be at least 1".into());
        }
        problem(
            if self.tls.cert.is_some() {
                "tls.key"
            } else {
                "tls.cert"
            },
            self.tls.cert.is_some() == self.tls.key.is_some(),
            "tls.cert and tls.key go together".into(),
        );
        problem(
            "redis_cluster",
            self.redis.is_none() || self.redis_cluster.is_empty(),
            "redis and redis_cluster exclude each other: give one".into(),
        );
        let admin = &self.admin;
        problem(
            "admin.listen",
            !admin.enabled || admin.listen.ip().is_loopback() || admin.token().is_some(),
            format!(
                "{} is reachable from other hosts: set admin.token (or CHAT_ADMIN_TOKEN)",
                admin.listen
            ),
        );
        problem(
            "log.level",
            valid_log_filter(&self.log.level),
            format!("{:?} is not a log level or filter", self.log.level),
        );
        problems
    }

    /// The token secret: config, then `CHAT_TOKEN_SECRET`, then `<data_dir>/token.secret`.
    pub fn token_secret(&self) -> std::io::Result<Vec<u8>> {
        if let Some(secret) = &self.auth.token_secret {
            return Ok(secret.as_bytes().to_vec());
        }
        match std::env::var("CHAT_TOKEN_SECRET") {
            Ok(secret) if !secret.is_empty() => Ok(secret.into_bytes()),
            _ => crate::auth::load_or_create_secret(&self.data_dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(config.listen, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(config.delivery.retransmit_ms, 15_000);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<Config>("[delivery]\nretransmit = 5\n").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `retransmit`"),
            "{err}"
        );
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let config: Config =
            toml::from_str("[delivery]\nretransmit_ms = 10\nack_delay_ms = 50\n").unwrap();
        assert!(config.validate().is_err());
    }
}
