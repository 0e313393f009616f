//! ACK frames per delivered message under load: one sender, N receivers of one group over
//! real QUIC on loopback, M messages at R messages/s; ACKs once per push vs batched and
//! delayed as the bundled ack-batching plugin announces (50 ms / 32 pushes).
//!
//! `cargo run --release -p chat-tests --example ack_bench [RECEIVERS] [MESSAGES]`
//! prints one JSON object per run, then a table.

use std::time::{Duration, Instant};

use chat_client::Client;
use chat_gateway::Config;
use chat_tests::TestGateway;

struct Run {
    policy: &'static str,
    rate: u32,
    deliveries: u64,
    ack_frames: u64,
    retransmits: u64,
    receiver_packets: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let receivers = args.next().transpose()?.unwrap_or(100);
    let messages = args.next().transpose()?.unwrap_or(1000);
    let mut runs = Vec::new();
    for rate in [100, 1000] {
        for (policy, tweak) in [
            ("ack every push", per_push as fn(&mut Config)),
            ("batched (bundled plugin)", |_: &mut Config| {}),
        ] {
            let run = measure(policy, tweak, receivers, messages, rate).await?;
            println!(
                "{}",
                serde_json::json!({
                    "bench": "acks", "policy": run.policy, "receivers": receivers,
                    "messages": messages, "rate": run.rate, "deliveries": run.deliveries,
                    "ack_frames": run.ack_frames, "retransmits": run.retransmits,
                    "receiver_packets": run.receiver_packets,
                    "ack_frames_per_delivery": ratio(run.ack_frames, run.deliveries),
                    "receiver_packets_per_delivery": ratio(run.receiver_packets, run.deliveries),
                })
            );
            runs.push(run);
        }
    }
    println!(
        "\n{receivers} receivers, {messages} messages\n\n| policy | msg/s | deliveries | ACK frames / delivery | receiver packets / delivery | retransmits |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &runs {
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {} |",
            r.policy,
            r.rate,
            r.deliveries,
            ratio(r.ack_frames, r.deliveries),
            ratio(r.receiver_packets, r.deliveries),
            r.retransmits
        );
    }
    Ok(())
}

fn per_push(c: &mut Config) {
    c.plugins = Some(Vec::new());
    c.delivery.ack_delay_ms = 0;
    c.delivery.ack_batch = 1;
}

fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

async fn measure(
    policy: &'static str,
    tweak: fn(&mut Config),
    receivers: usize,
    messages: usize,
    rate: u32,
) -> anyhow::Result<Run> {
    let gw = TestGateway::start_with(tweak).await;
    let sender = std::sync::Arc::new(gw.connect("sender").await);
    // The sender is a member too: take its own pushes, so they are acknowledged.
    let own = sender.clone();
    tokio::spawn(async move { while own.next_message().await.is_some() {} });
    let names: Vec<String> = (0..receivers).map(|i| format!("r{i:05}")).collect();
    sender.create_group("bench", &names).await?;
    let mut clients = Vec::with_capacity(receivers);
    for name in &names {
        clients.push(gw.connect(name).await);
    }
    let packets_before: u64 = clients.iter().map(sent_packets).sum();
    let before = gw.delivery_stats();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                let mut got = 0u64;
                while (got as usize) < messages {
                    match client.next_message_timeout(Duration::from_secs(30)).await {
                        Some(_) => got += 1,
                        None => break,
                    }
                }
                (client, got)
            })
        })
        .collect();
    let gap = Duration::from_secs(1) / rate;
    let start = Instant::now();
    for i in 0..messages {
        tokio::time::sleep_until((start + gap * i as u32).into()).await;
        sender.send("bench", vec![b'x'; 200]).await?;
    }
    let mut deliveries = 0;
    let mut clients = Vec::new();
    for reader in readers {
        let (client, got) = reader.await?;
        deliveries += got;
        clients.push(client);
    }
    // Let the last delayed ACKs land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = gw.delivery_stats();
    let receiver_packets = clients.iter().map(sent_packets).sum::<u64>() - packets_before;
    Ok(Run {
        policy,
        rate,
        deliveries,
        ack_frames: after.ack_frames - before.ack_frames,
        retransmits: after.retransmits - before.retransmits,
        receiver_packets,
    })
}

/// UDP datagrams this client has sent to the gateway.
fn sent_packets(client: &Client) -> u64 {
    client.connection().stats().udp_tx.datagrams
}
