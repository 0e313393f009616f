//! What a reconnect costs the store before the first push: the reads that decide which
//! groups to catch up, for a user in G groups of which 5 got messages while they were
//! away. The offline buffer (one read of the user's buffer) against scanning every
//! group's head. On Redis (its own `redis-server`), G = 100, 1,000 and 2,000. Prints one
//! JSON object per G, then a table.
//!
//! `cargo run --release -p chat-gateway --example login_bench`

#[allow(dead_code)] // only the redis-server launcher is used here
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_gateway::bus::RedisBus;
use chat_gateway::redis_target::{COMMANDS_SENT, RedisTarget};
use chat_gateway::store::{NewMessage, RedisStore, Store};
use chat_gateway::unread::{FlushPolicy, Unread};

use common::Redis;

const ACTIVE: usize = 5;
const LOGINS: usize = 50;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let redis = Redis::start()?;
    let target = RedisTarget::Server(format!("redis://127.0.0.1:{}", redis.port));
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&target).await?);
    let bus = Arc::new(RedisBus::connect(&target).await?);
    let unread = Unread::start(store.clone(), bus, FlushPolicy::default());

    let mut rows = Vec::new();
    for groups in [100, 1000, 2000] {
        let user = format!("user{groups}");
        for g in 0..groups {
            let group = format!("{user}-g{g}");
            store
                .create_group(&group, "friend", std::slice::from_ref(&user), 0)
                .await?;
        }
        for g in 0..ACTIVE {
            let group = format!("{user}-g{}", g * groups / ACTIVE);
            store
                .append(NewMessage {
                    group: group.clone(),
                    sender: "friend".into(),
                    msg_id: "m".into(),
                    body: Bytes::from_static(b"hello"),
                    ts_ms: 1,
                    visible_to: None,
                })
                .await?;
            unread.flush(&group).await?;
        }
        let buffer = measure(|| async {
            store.groups_of(&user).await?;
            store.cursors(&user, "phone").await?;
            let buffer = store.offline(&user, "phone").await?;
            anyhow::ensure!(buffer.entries.len() == ACTIVE, "{buffer:?}");
            Ok(())
        })
        .await?;
        let heads = measure(|| async {
            store.groups_of(&user).await?;
            store.cursors(&user, "phone").await?;
            let heads = store.conversations(&user).await?;
            let behind = heads.iter().filter(|(_, info)| info.head_seq > 0).count();
            anyhow::ensure!(behind == ACTIVE);
            Ok(())
        })
        .await?;
        let row = serde_json::json!({
            "bench": "login", "groups": groups, "active": ACTIVE, "logins": LOGINS,
            "buffer": {"requests": buffer.0, "p50_ms": ms(buffer.1)},
            "heads": {"requests": heads.0, "p50_ms": ms(heads.1)},
        });
        println!("{row}");
        rows.push(row);
    }
    println!(
        "\n| groups | requests: buffer | heads | p50: buffer | heads |\n| ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &rows {
        println!(
            "| {} | {} | {} | {} ms | {} ms |",
            r["groups"],
            r["buffer"]["requests"],
            r["heads"]["requests"],
            r["buffer"]["p50_ms"],
            r["heads"]["p50_ms"]
        );
    }
    Ok(())
}

/// Redis requests per login and the median time of `LOGINS` logins.
async fn measure<F, Fut>(login: F) -> anyhow::Result<(u64, Duration)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut times = Vec::with_capacity(LOGINS);
    let before = COMMANDS_SENT.load(Ordering::Relaxed);
    for _ in 0..LOGINS {
        let start = Instant::now();
        login().await?;
        times.push(start.elapsed());
    }
    let requests = (COMMANDS_SENT.load(Ordering::Relaxed) - before) / LOGINS as u64;
    times.sort();
    Ok((requests, times[LOGINS / 2]))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}
