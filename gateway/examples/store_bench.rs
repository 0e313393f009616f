//! Send-path throughput on each store: messages per second accepted by the request path
//! (membership check, durable append, encode, publish) on the embedded store and on Redis,
//! one sender at a time and many at once, and Redis commands per sent message. Starts its
//! own `redis-server` (AOF, `appendfsync everysec`) on a free port. No plugins.
//! Prints one JSON object and a table.
//!
//! `cargo run --release -p chat-gateway --example store_bench [-- MESSAGES [CONCURRENCY]]`

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_gateway::bus::{LocalBus, RedisBus};
use chat_gateway::redis_target::{COMMANDS_SENT, RedisTarget};
use chat_gateway::session::Requests;
use chat_gateway::store::{EmbeddedStore, RedisStore};
use chat_gateway::unread::FlushPolicy;
use chat_protocol::Frame;

use common::{Redis, requests_with};

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let messages: u32 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(5000);
    let concurrency: u32 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(32);

    let dir = tempfile::tempdir()?;
    let (embedded, _) = requests_with(
        Arc::new(EmbeddedStore::open(dir.path())?),
        Arc::new(LocalBus::new()),
        FlushPolicy::default(),
    )
    .await?;
    let redis = Redis::start()?;
    let target = RedisTarget::Server(format!("redis://127.0.0.1:{}", redis.port));
    let (on_redis, _) = requests_with(
        Arc::new(RedisStore::connect(&target).await?),
        Arc::new(RedisBus::connect(&target).await?),
        FlushPolicy::default(),
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
