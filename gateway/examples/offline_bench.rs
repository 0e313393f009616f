//! What writing the offline buffer costs the store: once per count flush, a busy group
//! writes a reference into the buffer of every member. *Busy*: the same group flushed
//! again and again (each member's latest write is that group already, and no device synced
//! there: updated in place);
//! *alternating*: two groups in turn (each write moves the entry to the buffer's next
//! position). Embedded store (a temporary directory) and Redis (its own `redis-server`),
//! 1,000 / 5,000 / 10,000 members. Prints one JSON object per row, then a table.
//!
//! `cargo run --release -p chat-gateway --example offline_bench`

#[allow(dead_code)] // only the redis-server launcher is used here
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_gateway::redis_target::RedisTarget;
use chat_gateway::store::{EmbeddedStore, RedisStore, Store};

use common::Redis;

const FLUSHES: u64 = 20;
const CAPACITY: usize = 1000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let redis = Redis::start()?;
    let target = RedisTarget::Server(format!("redis://127.0.0.1:{}", redis.port));
    let stores: [(&str, Arc<dyn Store>); 2] = [
        ("embedded", Arc::new(EmbeddedStore::open(dir.path())?)),
        ("redis", Arc::new(RedisStore::connect(&target).await?)),
    ];
    let mut rows = Vec::new();
    for (name, store) in &stores {
        for members in [1_000, 5_000, 10_000] {
            let refs = |seq: u64| -> Vec<(String, u64)> {
                (0..members)
                    .map(|m| (format!("m{members}-{m}"), seq))
                    .collect()
            };
            let (busy, alternating) = (format!("busy{members}"), format!("alt{members}"));
            // The first write of each member's entry, not timed.
            store.buffer_offline(&busy, &refs(1), CAPACITY).await?;
            let in_place = time_flushes(|seq| {
                let refs = refs(seq);
                let group = &busy;
                async move { store.buffer_offline(group, &refs, CAPACITY).await }
            })
            .await?;
            let moved = time_flushes(|seq| {
                let refs = refs(seq + FLUSHES);
                let group = if seq % 2 == 0 { &alternating } else { &busy };
                async move { store.buffer_offline(group, &refs, CAPACITY).await }
            })
            .await?;
            let row = serde_json::json!({
                "bench": "offline_buffer", "store": name, "members": members, "flushes": FLUSHES,
                "busy_ms": ms(in_place), "alternating_ms": ms(moved),
            });
            println!("{row}");
            rows.push(row);
        }
    }
    println!(
        "\n| store | members | one flush, busy group | two groups alternating |\n| --- | ---: | ---: | ---: |"
    );
    for r in &rows {
        println!(
            "| {} | {} | {} ms | {} ms |",
            r["store"].as_str().unwrap_or_default(),
            r["members"],
            r["busy_ms"],
            r["alternating_ms"]
        );
    }
    Ok(())
}

/// The median time of `FLUSHES` writes, the `i`th naming seq `i + 2`.
async fn time_flushes<F, Fut>(write: F) -> anyhow::Result<Duration>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), chat_gateway::store::StoreError>>,
{
    let mut times = Vec::new();
    for i in 0..FLUSHES {
        let start = Instant::now();
        write(i + 2).await?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}
