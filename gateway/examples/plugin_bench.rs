//! Plugin overhead: nanoseconds per hook call (pooled vs fresh instances) and send-path
//! throughput with the bundled plugins on vs off. Prints one JSON object and a table.
//!
//! `cargo run --release -p chat-gateway --example plugin_bench [-- MESSAGES]`

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chat_gateway::bus::{Bus, LocalBus};
use chat_gateway::plugins::{PluginSpec, Plugins};
use chat_gateway::session::{Publisher, Requests};
use chat_gateway::store::{EmbeddedStore, Store, StoredMessage};
use chat_gateway::unread::Unread;
use chat_protocol::{AckPolicy, Frame};

const POLICY: AckPolicy = AckPolicy {
    max_delay_ms: 50,
    max_batch: 32,
    retransmit_ms: 5000,
};

struct Setup {
    requests: Requests,
    plugins: Arc<Plugins>,
    _dir: tempfile::TempDir,
}

async fn setup(specs: &[PluginSpec]) -> anyhow::Result<Setup> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path())?);
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new());
    let unread = Unread::start(store.clone(), bus.clone(), Default::default());
    let publisher = Arc::new(Publisher::new(store.clone(), bus.clone(), unread));
    let plugins = Plugins::new(store.clone(), publisher.clone(), (POLICY, POLICY))?;
    plugins.load(specs).await?;
    let requests = Requests::new(store, bus, publisher, plugins.clone());
    let create = Frame::CreateGroup {
        id: 1,
        group: "g".into(),
        members: vec!["bob".into()],
    };
    requests.handle("alice", create).await;
    Ok(Setup {
        requests,
        plugins,
        _dir: dir,
    })
}

/// Nanoseconds per `on_send` through the chain.
async fn ns_per_send_hook(plugins: &Plugins, calls: u32) -> f64 {
    let body = Bytes::from_static(&[b'x'; 200]);
    let start = Instant::now();
    for _ in 0..calls {
        plugins
            .on_send("g", "alice", body.clone(), vec![])
            .await
            .expect("accepted");
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

/// Nanoseconds per `filter_read` call on a page of `page` messages.
async fn ns_per_read_hook(plugins: &Plugins, calls: u32, page: u64) -> f64 {
    let messages: Vec<StoredMessage> = (1..=page)
        .map(|seq| StoredMessage {
            group: "g".into(),
            seq,
            sender: "alice".into(),
            ts_ms: 0,
            body: Bytes::from_static(&[b'x'; 200]),
            visible_to: None,
        })
        .collect();
    let start = Instant::now();
    for _ in 0..calls {
        plugins.hidden("bob", "g", &messages).await.expect("read");
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

/// Sends per second through the whole request path (plugins, durable append, publish).
async fn sends_per_s(requests: &Requests, messages: u32) -> f64 {
    let start = Instant::now();
    for i in 0..messages {
        let send = Frame::Send {
            id: i,
            group: "g".into(),
            msg_id: format!("m{i}"),
            body: Bytes::from_static(&[b'x'; 200]),
            to: vec![],
        };
        let response = requests.handle("alice", send).await;
        assert!(matches!(response, Frame::Sent { .. }), "{response:?}");
    }
    messages as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let messages: u32 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2000);
    let calls = 20_000;

    let word_filter = |reuse: bool| {
        let mut spec = PluginSpec::new("bundled:word-filter");
        spec.config = "words = [\"darn\"]".parse().expect("toml");
        spec.reuse_instances = reuse;
        spec
    };
    let pooled = setup(&[word_filter(true)]).await?;
    let send_pooled = ns_per_send_hook(&pooled.plugins, calls).await;
    let fresh = setup(&[word_filter(false)]).await?;
    let send_fresh = ns_per_send_hook(&fresh.plugins, calls / 20).await;
    let delete = setup(&[PluginSpec::new("bundled:delete-filter")]).await?;
    let read_50 = ns_per_read_hook(&delete.plugins, calls / 4, 50).await;

    let off = setup(&[]).await?;
    let on = setup(&PluginSpec::defaults()).await?;
    // Warm up both (page cache, first instances), then measure, alternating.
    sends_per_s(&off.requests, 100).await;
    sends_per_s(&on.requests, 100).await;
    let off_rate = sends_per_s(&off.requests, messages).await;
    let on_rate = sends_per_s(&on.requests, messages).await;

    let json = serde_json::json!({
        "bench": "plugins",
        "ns_per_send_hook_pooled": send_pooled.round(),
        "ns_per_send_hook_fresh_instance": send_fresh.round(),
        "ns_per_read_hook_page_50": read_50.round(),
        "sends_per_s_plugins_off": off_rate.round(),
        "sends_per_s_bundled_plugins_on": on_rate.round(),
        "ratio_on_off": (on_rate / off_rate * 1000.0).round() / 1000.0,
        "messages": messages,
    });
    println!("{json}");
    eprintln!("| measure | value |");
    eprintln!("| --- | --- |");
    eprintln!("| send hook, pooled instance (word-filter) | {send_pooled:.0} ns |");
    eprintln!("| send hook, fresh instance per call | {send_fresh:.0} ns |");
    eprintln!("| read hook, page of 50 (delete-filter, one kv read) | {read_50:.0} ns |");
    eprintln!("| send path, no plugins | {off_rate:.0} msg/s |");
    eprintln!(
        "| send path, bundled plugins | {on_rate:.0} msg/s ({:.3}x) |",
        on_rate / off_rate
    );
    Ok(())
}
