//! Unread counting with merged writes against the naive way (one increment per member per
//! message): for one group of MEMBERS members on Redis at 10, 100 and 1,000 messages/s,
//! the counter writes per second each way, their ratio, and how stale counts get (from a
//! message being stored to its count being written: p50 and p99). Starts its own
//! `redis-server`. Prints one JSON object and a table.
//!
//! `cargo run --release -p chat-gateway --example unread_bench [-- MEMBERS SECONDS]`

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_gateway::bus::RedisBus;
use chat_gateway::redis_target::RedisTarget;
use chat_gateway::session::Requests;
use chat_gateway::store::RedisStore;
use chat_gateway::unread::FlushPolicy;
use chat_protocol::Frame;

use common::{Redis, requests_with};

const RATES: [u32; 3] = [10, 100, 1000];

/// A group of `members` users named `u0`, `u1`, ...; `u0` owns it and sends.
async fn big_group(requests: &Requests, group: &str, members: usize) {
    let users: Vec<String> = (1..members).map(|i| format!("u{i}")).collect();
    let create = Frame::CreateGroup {
        id: 1,
        group: group.into(),
        members: vec![],
    };
    assert!(matches!(
        requests.handle("u0", create).await,
        Frame::Done { .. }
    ));
    for chunk in users.chunks(1000) {
        let add = Frame::AddMembers {
            id: 2,
            group: group.into(),
            users: chunk.to_vec(),
        };
        assert!(matches!(
            requests.handle("u0", add).await,
            Frame::Done { .. }
        ));
    }
}

/// Sends `rate` messages per second for `seconds`, each on its own task so a slow reply
/// never lowers the rate.
async fn send_at(requests: &Arc<Requests>, group: &str, rate: u32, seconds: u32) -> u32 {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut sends = Vec::new();
    for i in 0..rate * seconds {
        tick.tick().await;
        let (requests, group) = (requests.clone(), group.to_owned());
        sends.push(tokio::spawn(async move {
            let send = Frame::Send {
                id: i + 1,
                group,
                msg_id: format!("m{i}"),
                body: Bytes::from_static(&[b'x'; 200]),
                to: vec![],
            };
            matches!(requests.handle("u0", send).await, Frame::Sent { .. })
        }));
    }
    let mut sent = 0;
    for send in sends {
        sent += send.await.expect("send task") as u32;
    }
    sent
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let members: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(5000);
    let seconds: u32 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(5);

    let redis = Redis::start()?;
    let target = RedisTarget::Server(format!("redis://127.0.0.1:{}", redis.port));
    let (requests, unread) = requests_with(
        Arc::new(RedisStore::connect(&target).await?),
        Arc::new(RedisBus::connect(&target).await?),
        FlushPolicy::default(),
    )
    .await?;

    let mut rows = Vec::new();
    for rate in RATES {
        let group = format!("g{rate}");
        big_group(&requests, &group, members).await;
        let calls_before = redis.command_calls()?;
        let stats_before = unread.stats();
        let sent = send_at(&requests, &group, rate, seconds).await;
        // The last stage is flushed within the interval.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let calls_after = redis.command_calls()?;
        let stats = unread.stats();
        let calls = |name: &str| {
            let count =
                |c: &std::collections::BTreeMap<String, u64>| c.get(name).copied().unwrap_or(0);
            count(&calls_after) - count(&calls_before)
        };
        // One ZADD per offline-buffer reference written (and one a second renewing the
        // gateway's registration, negligible here).
        let offline = calls("zadd");
        // Each append bumps the group's head with one HINCRBY, each buffer reference its
        // user's position with one: neither is a count write.
        let merged = calls("hincrby").saturating_sub(sent as u64 + offline);
        let merged_per_s = merged as f64 / seconds as f64;
        let naive_per_s = sent as f64 * (members - 1) as f64 / seconds as f64;
        let mut staleness =
            stats.staleness[stats_before.staleness.len().min(stats.staleness.len())..].to_vec();
        staleness.sort();
        rows.push(serde_json::json!({
            "rate": rate,
            "sent": sent,
            "flushes": stats.flushes - stats_before.flushes,
            "naive_writes_per_s": naive_per_s.round() as u64,
            "merged_writes_per_s": merged_per_s.round() as u64,
            "offline_buffer_writes_per_s": (offline as f64 / seconds as f64).round() as u64,
            "ratio": (naive_per_s / merged_per_s.max(1.0) * 10.0).round() / 10.0,
            "staleness_ms_p50": percentile(&staleness, 0.50).round() as u64,
            "staleness_ms_p99": percentile(&staleness, 0.99).round() as u64,
        }));
    }

    let json = serde_json::json!({
        "bench": "unread",
        "members": members,
        "seconds": seconds,
        "flush_ms": FlushPolicy::default().every.as_millis() as u64,
        "flush_at": FlushPolicy::default().at,
        "rates": rows,
    });
    println!("{json}");
    eprintln!(
        "| msg/s | counter writes/s, naive | merged | ratio | staleness p50 | p99 | offline-buffer writes/s |"
    );
    eprintln!("| --- | --- | --- | --- | --- | --- | --- |");
    for row in json["rates"].as_array().expect("rows") {
        eprintln!(
            "| {} | {} | {} | {}× | {} ms | {} ms | {} |",
            row["rate"],
            row["naive_writes_per_s"],
            row["merged_writes_per_s"],
            row["ratio"],
            row["staleness_ms_p50"],
            row["staleness_ms_p99"],
            row["offline_buffer_writes_per_s"]
        );
    }
    Ok(())
}
