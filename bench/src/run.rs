//! One run: deploy, set up the groups, connect the members, send, wait for every
//! delivery, and read what it cost. Prints nothing; returns the JSON line.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_client::{Client, ConnectOptions};
use chat_gateway::auth::TokenAuthority;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::deployment::{Deployment, Launch, SECRET, Variant};
use crate::load::{self, Clock, Load};
use crate::procfs;

/// Gateway counters read before and after the messages (summed over gateways).
const COUNTERS: [&str; 4] = [
    "chat_ack_frames_total",
    "chat_pushes_retransmitted_total",
    "chat_quic_send_calls_total",
    "chat_quic_packets_lost_total",
];

/// Most users one CreateGroup or AddMembers names.
const USERS_PER_REQUEST: usize = 1000;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Workload {
    /// Members connected (N).
    #[arg(long)]
    pub members: usize,
    /// Messages sent (M).
    #[arg(long)]
    pub messages: usize,
    /// Messages per second; 0: as fast as the gateway takes them, `window` in flight.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Body bytes of each message.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// Groups the members are spread over (member i in group i mod G); messages go
    /// round-robin over them. 1: every message to every member.
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// Sends in flight at rate 0 (the sender's back-pressure).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Members keep their group in the background (`Focus` naming none): they get compact
    /// `Activity` notices instead of pushes, and a delivery is a message a notice covered
    /// (its latency: from its send to the notice).
    #[arg(long)]
    pub background: bool,
}

/// When each message was stamped, by group and seq (from the sender's `Sent`).
type SendTimes = std::sync::Mutex<HashMap<String, HashMap<u64, u64>>>;

pub async fn run(workload: &Workload, variant: Variant, gateway: &Launch) -> anyhow::Result<Value> {
    let w = workload;
    anyhow::ensure!(
        w.groups >= 1 && w.members.is_multiple_of(w.groups) && w.messages.is_multiple_of(w.groups),
        "members and messages must be multiples of groups"
    );
    let deployment = Deployment::start(variant, gateway).await?;
    eprintln!(
        "[chat-bench] {variant:?} up; setting up {} group(s)",
        w.groups
    );
    let tokens = TokenAuthority::new(SECRET.as_bytes());
    let token = |user: &str| tokens.mint(user, 3600).expect("minting a token");
    let gateways: Vec<_> = deployment.gateways.iter().map(|g| g.addr).collect();

    // The sender is another device: on a thread of its own, so the members' backlog in
    // this process does not hold its sends back (their lateness would count as latency).
    let sender_thread = OwnThread::start("sender")?;
    let sender_handle = sender_thread.handle();
    let sender = sender_handle
        .spawn(Client::connect(ConnectOptions::new(
            gateways[0],
            &deployment.cert,
            token("sender"),
        )))
        .await?
        .context("connecting the sender")?;
    let users: Vec<String> = (0..w.members).map(|i| format!("m{i}")).collect();
    let groups: Vec<String> = (0..w.groups).map(|g| format!("g{g}")).collect();
    create_groups(&sender, &groups, &users).await?;
    // The sender is a member too: take its own copies as they come.
    let drain = {
        let sender = sender.clone();
        sender_handle.spawn(async move { while sender.next_message().await.is_some() {} })
    };

    eprintln!("[chat-bench] connecting {} members", w.members);
    let rss_before = deployment.rss_kb();
    let connect_started = Instant::now();
    let members = Load::join(&gateways, &users, token, w.background, &deployment.cert).await?;
    let connect_s = connect_started.elapsed().as_secs_f64();
    let rss_connected = deployment.rss_kb();

    let counters_before = deployment.counters(COUNTERS).await;
    let drops = procfs::udp_buffer_drops();
    let load_ports = members.ports();
    let gateway_ports: Vec<u16> = gateways.iter().map(|a| a.port()).collect();
    let socket_drops = [load_ports, &gateway_ports].map(procfs::udp_socket_drops);
    let load_cpu = procfs::own_cpu();
    let redis_cpu = deployment.redis_cpu();
    let cpu = deployment.cpu();

    eprintln!(
        "[chat-bench] connected in {connect_s:.1} s; sending {} messages",
        w.messages
    );
    let clock = Arc::new(Clock::new());
    let per_member = (w.messages / w.groups) as u64;
    let patience = if w.rate > 0.0 {
        Duration::from_secs_f64(60.0 + 2.0 * w.messages as f64 / w.rate)
    } else {
        Duration::from_secs(120)
    };
    let go = Instant::now();
    let deadline = go + patience;
    let received = members.receive(per_member, clock.clone(), deadline);
    let send_times = Arc::new(SendTimes::default());
    let send_errors = sender_handle
        .spawn(send(
            sender.clone(),
            groups.clone(),
            w.clone(),
            clock.clone(),
            send_times.clone(),
        ))
        .await?;
    let received = received.await;
    let send_times = std::mem::take(&mut *send_times.lock().expect("send times"));
    let seen = received.seen;
    let deliveries = seen.unique;
    let mut latencies = seen.latencies_us;
    for (group, first, last, at) in seen.notices {
        let sent = &send_times[&group];
        latencies.extend((first..=last).filter_map(|seq| {
            let us = at.saturating_sub(*sent.get(&seq)?) / 1000;
            Some(us.min(u32::MAX.into()) as u32)
        }));
    }
    if let Some(error) = &received.first_error {
        eprintln!(
            "[chat-bench] {} member(s) failed; first: {error}",
            received.errors
        );
    }
    let last = seen.last_at.unwrap_or(go).max(go);
    let duration = last.duration_since(go).as_secs_f64().max(1e-9);
    let transport = received.transport;
    eprintln!("[chat-bench] members' QUIC frames: {}", transport.frames());
    let server_cpu = deployment.cpu().saturating_sub(cpu).as_secs_f64();
    let counters_after = deployment.counters(COUNTERS).await;
    let [ack_frames, retransmits, send_calls, packets_lost] =
        std::array::from_fn(|i| counters_after[i] - counters_before[i]);
    let expected = (w.members as u64) * per_member;
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        match latencies.len() {
            0 => 0.0,
            n => latencies[((p * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1000.0,
        }
    };
    let line = json!({
        "peer": "chat-gateway",
        "variant": variant,
        "members": w.members,
        "messages": w.messages,
        "rate": w.rate,
        "groups": w.groups,
        "background": w.background,
        "deliveries": deliveries,
        "expected_deliveries": expected,
        "lost": expected.saturating_sub(deliveries),
        "duration_s": round(duration, 3),
        "deliveries_per_s": (deliveries as f64 / duration).round(),
        "p50_ms": round(pct(0.50), 3),
        "p99_ms": round(pct(0.99), 3),
        "max_ms": round(pct(1.0), 3),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_us_per_delivery": round(server_cpu * 1e6 / deliveries.max(1) as f64, 2),
        "server_peak_rss_mb": round(deployment.peak_rss_kb() as f64 / 1024.0, 1),
        "rss_per_conn_kb": round(rss_connected.saturating_sub(rss_before) as f64 / w.members as f64, 1),
        "server_rss_before_mb": round(rss_before as f64 / 1024.0, 1),
        "server_rss_connected_mb": round(rss_connected as f64 / 1024.0, 1),
        "gateways": deployment.gateways.len(),
        "redis_cpu_s": redis_cpu.map(|before| round(deployment.redis_cpu().unwrap_or_default().saturating_sub(before).as_secs_f64(), 2)),
        "load_cpu_s": round(procfs::own_cpu().saturating_sub(load_cpu).as_secs_f64(), 2),
        "connect_s": round(connect_s, 3),
        "ack_frames_per_delivery": round(ack_frames / deliveries.max(1) as f64, 4),
        "client_datagrams_per_delivery": round(transport.sent as f64 / deliveries.max(1) as f64, 4),
        "gateway_datagrams_per_delivery": round(transport.received as f64 / deliveries.max(1) as f64, 4),
        "gateway_send_calls_per_delivery": round(send_calls / deliveries.max(1) as f64, 4),
        "gateway_packets_lost": packets_lost,
        "retransmits": retransmits,
        "send_errors": send_errors,
        "member_errors": received.errors,
        "udp_buf_drops": procfs::udp_buffer_drops().saturating_sub(drops),
        "load_udp_drops": procfs::udp_socket_drops(load_ports).saturating_sub(socket_drops[0]),
        "gateway_udp_drops": procfs::udp_socket_drops(&gateway_ports).saturating_sub(socket_drops[1]),
        "payload_bytes": w.payload_bytes,
        "threads": 1,
    });
    drop(members);
    sender.close().await;
    drain.abort();
    Ok(line)
}

/// A one-worker runtime on a thread of its own, shut down without blocking when dropped
/// (it is dropped inside the run's own runtime).
struct OwnThread(Option<tokio::runtime::Runtime>);

impl OwnThread {
    fn start(name: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (v * scale).round() / scale
}

/// Creates the groups, the sender as owner: member i in group i mod G.
async fn create_groups(sender: &Client, groups: &[String], users: &[String]) -> anyhow::Result<()> {
    let creations = groups.iter().enumerate().map(|(g, group)| {
        let members: Vec<String> = users
            .iter()
            .skip(g)
            .step_by(groups.len())
            .cloned()
            .collect();
        async move {
            let mut chunks = members.chunks(USERS_PER_REQUEST);
            sender
                .create_group(group, chunks.next().unwrap_or_default())
                .await?;
            for chunk in chunks {
                sender.add_members(group, chunk).await?;
            }
            anyhow::Ok(())
        }
    });
    let results: Vec<_> = futures_util::stream::iter(creations)
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(())
}

/// Sends the messages round-robin over the groups: at `rate`, each stamped with the time
/// it was due (lateness counts as latency); at rate 0, `window` in flight, each stamped
/// when it goes. Returns how many sends failed.
async fn send(
    sender: Client,
    groups: Vec<String>,
    w: Workload,
    clock: Arc<Clock>,
    times: Arc<SendTimes>,
) -> usize {
    let (sender, w, clock, times) = (&sender, &w, &clock, &times);
    let start = Instant::now();
    let sends = (0..w.messages).map(|i| {
        let group = &groups[i % groups.len()];
        async move {
            let stamp = if w.rate > 0.0 {
                let due = start + Duration::from_secs_f64(i as f64 / w.rate);
                tokio::time::sleep_until(due.into()).await;
                clock.at_ns(due)
            } else {
                clock.now_ns()
            };
            match sender.send(group, load::body(stamp, w.payload_bytes)).await {
                Ok(sent) => {
                    let mut times = times.lock().expect("send times");
                    times.entry(sent.group).or_default().insert(sent.seq, stamp);
                    false
                }
                Err(_) => true,
            }
        }
    });
    // At a rate, as many in flight as it takes to keep the schedule.
    let window = if w.rate > 0.0 {
        w.messages.max(1)
    } else {
        w.window
    };
    futures_util::stream::iter(sends)
        .buffer_unordered(window)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await
}
