//! Send-path throughput on each store: messages per second accepted by the request path
//! (membership check, durable append, encode, publish) on the embedded store and on Redis,
//! one sender at a time and many at once, and Redis commands per sent message. Starts its
//! own `redis-server` (AOF, `appendfsync everysec`) on a free port. No plugins.
//! Prints one JSON object and a table.
//!
//! `cargo run --release -p chat-gateway --example store_bench [-- MESSAGES [CONCURRENCY]]`

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use chat_gateway::bus::{Bus, LocalBus, RedisBus};
use chat_gateway::plugins::Plugins;
use chat_gateway::redis_target::{COMMANDS_SENT, RedisTarget};
use chat_gateway::session::{Publisher, Requests};
use chat_gateway::store::{EmbeddedStore, RedisStore, Store};
use chat_gateway::unread::Unread;
use chat_protocol::{AckPolicy, Frame};

const POLICY: AckPolicy = AckPolicy {
    max_delay_ms: 50,
    max_batch: 32,
    retransmit_ms: 5000,
};

async fn requests(store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> anyhow::Result<Arc<Requests>> {
    let unread = Unread::start(store.clone(), bus.clone(), Default::default());
    let publisher = Arc::new(Publisher::new(store.clone(), bus.clone(), unread));
    let plugins = Plugins::new(store.clone(), publisher.clone(), (POLICY, POLICY))?;
    Ok(Arc::new(Requests::new(store, bus, publisher, plugins)))
}

/// Messages per second through `requests`, from `senders` concurrent senders, each
/// sending to a group of its own (created first). `run` keeps ids unique across runs.
async fn sends_per_s(requests: &Arc<Requests>, run: &str, messages: u32, senders: u32) -> f64 {
    for s in 0..senders {
        let create = Frame::CreateGroup {
            id: 1,
            group: format!("{run}-{s}"),
            members: vec!["bob".into()],
        };
        requests.handle("alice", create).await;
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let requests = requests.clone();
            let group = format!("{run}-{s}");
            tokio::spawn(async move {
                for i in 0..messages / senders {
                    let send = Frame::Send {
                        id: i + 1,
                        group: group.clone(),
                        msg_id: format!("m{i}"),
                        body: Bytes::from_static(&[b'x'; 200]),
                        to: vec![],
                    };
                    let response = requests.handle("alice", send).await;
                    assert!(matches!(response, Frame::Sent { .. }), "{response:?}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("sender");
    }
    (messages / senders * senders) as f64 / start.elapsed().as_secs_f64()
}

/// A throwaway `redis-server` with AOF (`everysec`, the usual production setting).
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "everysec", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (install it, e.g. apt-get install redis-server)")?;
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Self {
                    child,
                    port,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("redis-server did not come up")
    }

    /// Calls per command so far (`INFO commandstats`), commands run by scripts included.
    fn command_calls(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO", "commandstats"])
            .output()?;
        let mut calls = BTreeMap::new();
        for line in String::from_utf8(out.stdout)?.lines() {
            // cmdstat_hget:calls=12,usec=...
            let Some((name, stats)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let n = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .context("calls=")?
                .parse()?;
            calls.insert(name.to_owned(), n);
        }
        Ok(calls)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let messages: u32 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(5000);
    let concurrency: u32 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(32);

    let dir = tempfile::tempdir()?;
    let embedded = requests(
        Arc::new(EmbeddedStore::open(dir.path())?),
        Arc::new(LocalBus::new()),
    )
    .await?;
    let redis = Redis::start()?;
    let target = RedisTarget::Server(format!("redis://127.0.0.1:{}", redis.port));
    let on_redis = requests(
        Arc::new(RedisStore::connect(&target).await?),
        Arc::new(RedisBus::connect(&target).await?),
    )
    .await?;

    // Warm up, then measure.
    sends_per_s(&embedded, "warm", 200, 1).await;
    sends_per_s(&on_redis, "warm", 200, 1).await;
    let embedded_1 = sends_per_s(&embedded, "one", messages / 2, 1).await;
    let embedded_n = sends_per_s(&embedded, "many", messages, concurrency).await;
    let redis_1 = sends_per_s(&on_redis, "one", messages, 1).await;
    // Commands per message: the sends' calls, less those of creating their groups.
    let before = redis.command_calls()?;
    let sent_before = COMMANDS_SENT.load(Ordering::Relaxed);
    let redis_n = sends_per_s(&on_redis, "many", messages, concurrency).await;
    // Let the last unread flush land: it belongs to these messages.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_sends = redis.command_calls()?;
    let sent_after = COMMANDS_SENT.load(Ordering::Relaxed);
    sends_per_s(&on_redis, "count", 0, concurrency).await;
    let after_creates = redis.command_calls()?;
    let creates = COMMANDS_SENT.load(Ordering::Relaxed) - sent_after;
    let sent = (messages / concurrency * concurrency) as f64;
    let calls = |at: &BTreeMap<String, u64>, name: &str| at.get(name).copied().unwrap_or(0);
    let mut per_command = BTreeMap::new();
    for name in after_creates.keys() {
        let create = calls(&after_creates, name) - calls(&after_sends, name);
        let send = calls(&after_sends, name) - calls(&before, name);
        let n = send.saturating_sub(create) as f64 / sent;
        if n >= 0.005 && name != "info" && name != "ping" {
            per_command.insert(name.clone(), (n * 100.0).round() / 100.0);
        }
    }
    let per_message: f64 = per_command.values().sum();
    let round_trips = (sent_after - sent_before).saturating_sub(creates) as f64
        / (messages / concurrency * concurrency) as f64;

    let json = serde_json::json!({
        "bench": "store",
        "messages": messages,
        "concurrency": concurrency,
        "embedded_msgs_per_s_1_sender": embedded_1.round(),
        "embedded_msgs_per_s_n_senders": embedded_n.round(),
        "redis_msgs_per_s_1_sender": redis_1.round(),
        "redis_msgs_per_s_n_senders": redis_n.round(),
        "redis_commands_per_message": (per_message * 100.0).round() / 100.0,
        "redis_requests_per_message": (round_trips * 100.0).round() / 100.0,
        "redis_calls_per_message": per_command,
    });
    println!("{json}");
    eprintln!("| send path | 1 sender | {concurrency} senders |");
    eprintln!("| --- | --- | --- |");
    eprintln!(
        "| embedded (redb, fsync per message) | {embedded_1:.0} msg/s | {embedded_n:.0} msg/s |"
    );
    eprintln!("| Redis (AOF everysec) | {redis_1:.0} msg/s | {redis_n:.0} msg/s |");
    eprintln!(
        "| Redis requests per message (commands sent; scripts count once) | {round_trips:.2} | |"
    );
    eprintln!("| Redis commands per message (those scripts run included) | {per_message:.2} | |");
    for (name, n) in &per_command {
        eprintln!("| `{name}` per message | {n:.2} | |");
    }
    Ok(())
}
