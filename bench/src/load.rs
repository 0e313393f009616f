//! The load: N members connected over QUIC speaking `chat/1` directly (a light client
//! per member: Hello, the push stream, batched ACKs under the Welcome's policy), and one
//! sender using the reference client library. Sender and members share this process,
//! so a message's body carries its send time on the process's monotonic clock; the sender
//! runs on a thread of its own (`run.rs`), as another device would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use chat_client::AckClock;
use chat_protocol::{AckPolicy, AckRange, Frame, FrameDecoder, MAX_FRAME_LEN, PROTOCOL_VERSION};
use futures_util::StreamExt;
use quinn::{Connection, Endpoint, SendStream};

/// Members per client endpoint (UDP socket), as the ceiling's load.
const MEMBERS_PER_ENDPOINT: usize = 1000;
/// Handshakes in flight while connecting.
const CONNECTING: usize = 256;
/// UDP socket buffers asked for, as the ceiling's load.
const UDP_BUFFER: usize = 4 << 20;

/// The members' one clock: body timestamps are nanoseconds since `EPOCH`.
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Self(Instant::now())
    }

    pub fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }

    pub fn at_ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.0).as_nanos() as u64
    }
}

/// A message body of `len` bytes (at least 16) that starts with its send time in hex.
pub fn body(sent_ns: u64, len: usize) -> Bytes {
    let mut body = format!("{sent_ns:016x}");
    body.extend(std::iter::repeat_n('.', len.saturating_sub(16)));
    body.into()
}

fn sent_ns(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body.get(..16)?)
        .ok()
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
}

/// A connected member: its connection, control stream and push stream.
pub struct Member {
    connection: Connection,
    control: SendStream,
    policy: AckPolicy,
}

/// Client endpoints with large UDP buffers, one per `MEMBERS_PER_ENDPOINT` members.
pub fn endpoints(members: usize, cert: &Path) -> anyhow::Result<Vec<Endpoint>> {
    let config = chat_client::quic_client_config(cert)?;
    (0..members.div_ceil(MEMBERS_PER_ENDPOINT).max(1))
        .map(|_| {
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            let _ = socket.set_recv_buffer_size(UDP_BUFFER);
            let _ = socket.set_send_buffer_size(UDP_BUFFER);
            socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
            let mut endpoint = Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket.into(),
                Arc::new(quinn::TokioRuntime),
            )?;
            endpoint.set_default_client_config(config.clone());
            Ok(endpoint)
        })
        .collect()
}

/// Connects `users` (user i to `gateways[i % len]`), at most `CONNECTING` at a time;
/// with `background`, each keeps its groups in the background (`Focus` naming none).
pub async fn connect(
    endpoints: &[Endpoint],
    gateways: &[SocketAddr],
    users: &[String],
    token: impl Fn(&str) -> String,
    background: bool,
) -> anyhow::Result<Vec<Member>> {
    let attempts = users.iter().enumerate().map(|(i, user)| {
        let endpoint = endpoints[i / MEMBERS_PER_ENDPOINT].clone();
        let addr = gateways[i % gateways.len()];
        let token = token(user);
        async move { join(&endpoint, addr, token, background).await }
    });
    let members: Vec<anyhow::Result<Member>> = futures_util::stream::iter(attempts)
        .buffered(CONNECTING)
        .collect()
        .await;
    members.into_iter().collect()
}

async fn join(
    endpoint: &Endpoint,
    addr: SocketAddr,
    token: String,
    background: bool,
) -> anyhow::Result<Member> {
    let connection = endpoint.connect(addr, "localhost")?.await?;
    let (mut control, mut answers) = connection.open_bi().await?;
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        token,
        device: "bench".into(),
    };
    control.write_all(&hello.encode()).await?;
    if background {
        let focus = Frame::Focus {
            id: 1,
            groups: Vec::new(),
        };
        control.write_all(&focus.encode()).await?;
    }
    let mut decoder = FrameDecoder::new();
    let mut policy = None;
    // Connected once welcomed and, in the background, once the focus is applied.
    while policy.is_none() || background {
        if let Some(frame) = decoder.next_frame()? {
            match frame {
                Frame::Welcome { ack, .. } => policy = Some(ack),
                Frame::Done { id: 1 } if background => break,
                other => bail!("unexpected {:?} while connecting", other.frame_type()),
            }
            continue;
        }
        let chunk = answers
            .read_chunk(MAX_FRAME_LEN, true)
            .await?
            .context("control stream closed before Welcome")?;
        decoder.extend(&chunk.bytes);
    }
    // The gateway's push stream shows up with its first push.
    Ok(Member {
        connection,
        control,
        policy: policy.context("no Welcome")?,
    })
}

/// What one member saw.
pub struct Received {
    /// Unique pushes (seqs not seen before in their group).
    pub unique: u64,
    /// End-to-end latency of each, in microseconds.
    pub latencies_us: Vec<u32>,
    /// In the background: each `Activity` entry that covered new seqs, as (group, first
    /// seq, last seq, arrival on the clock); latencies come from the send times later.
    pub notices: Vec<(String, u64, u64, u64)>,
    /// When the last unique push arrived.
    pub last_at: Option<Instant>,
    pub error: Option<String>,
    /// Kept open until every member is done, so nobody's close costs the others.
    pub connection: Connection,
}

impl Member {
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.connection.stats()
    }

    /// Reads pushes until `expected` unique ones arrived or `deadline` passes,
    /// acknowledging them as the Welcome's live policy says.
    pub async fn receive(
        mut self,
        expected: u64,
        clock: Arc<Clock>,
        deadline: Instant,
    ) -> Received {
        let mut received = Received {
            unique: 0,
            latencies_us: Vec::with_capacity(expected as usize),
            notices: Vec::new(),
            last_at: None,
            error: None,
            connection: self.connection.clone(),
        };
        let mut decoder = FrameDecoder::new();
        let mut latest: HashMap<String, u64> = HashMap::new();
        let mut pending: Vec<AckRange> = Vec::new();
        let mut pending_count = 0u16;
        let mut ack_due: Option<Instant> = None;
        // ACKs go on the member's own clock, as chat-client sends them.
        let ack_clock = AckClock::new(
            Instant::now(),
            Duration::from_millis(self.policy.max_delay_ms.into()),
            rand::random(),
        );
        let accepted = tokio::time::timeout_at(deadline.into(), self.connection.accept_uni()).await;
        let mut push = match accepted {
            Ok(Ok(push)) => push,
            Ok(Err(e)) => {
                received.error = Some(e.to_string());
                return received;
            }
            Err(_) => {
                received.error = Some("no push stream before the deadline".into());
                return received;
            }
        };
        // One timer for the whole run, moved only when the wake-up moves: a new one per
        // push cost the harness a timer-wheel insert and removal per delivery (about 4 %
        // of its CPU at steady-5k, where it runs at its limit).
        let mut wake = deadline;
        let timer = tokio::time::sleep_until(wake.into());
        tokio::pin!(timer);
        while received.unique < expected {
            let next = ack_due.map_or(deadline, |due| due.min(deadline));
            if next != wake {
                wake = next;
                timer.as_mut().reset(wake.into());
            }
            let read = tokio::select! {
                read = push.read_chunk(MAX_FRAME_LEN, true) => read,
                _ = &mut timer => {
                    if Instant::now() >= deadline {
                        received.error = Some("deadline".into());
                        break;
                    }
                    if let Err(e) = self.ack(&mut pending).await {
                        received.error = Some(e.to_string());
                        break;
                    }
                    (pending_count, ack_due) = (0, None);
                    continue;
                }
            };
            let chunk = match read {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    received.error = Some("push stream ended".into());
                    break;
                }
                Err(e) => {
                    received.error = Some(e.to_string());
                    break;
                }
            };
            decoder.extend(&chunk.bytes);
            let now = clock.now_ns();
            loop {
                let frame = match decoder.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        received.error = Some(e.to_string());
                        return received;
                    }
                };
                let message = match frame {
                    Frame::Push { message } => message,
                    Frame::Activity { groups } => {
                        for a in groups {
                            let last = latest.entry(a.group.clone()).or_default();
                            if a.seq > *last {
                                received.unique += a.seq - *last;
                                received.last_at = Some(Instant::now());
                                received.notices.push((a.group, *last + 1, a.seq, now));
                                *last = a.seq;
                            }
                        }
                        continue;
                    }
                    _ => continue,
                };
                let seq = message.seq;
                let last = match latest.get_mut(&message.group) {
                    Some(last) => last,
                    None => latest.entry(message.group.clone()).or_default(),
                };
                if seq > *last {
                    *last = seq;
                    received.unique += 1;
                    received.last_at = Some(Instant::now());
                    if let Some(sent) = sent_ns(&message.body) {
                        received
                            .latencies_us
                            .push((now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
                    }
                }
                add_ack(&mut pending, message.group, seq);
                pending_count += 1;
                ack_due.get_or_insert_with(|| ack_clock.next_after(Instant::now()));
            }
            if pending_count >= self.policy.max_batch {
                if let Err(e) = self.ack(&mut pending).await {
                    received.error = Some(e.to_string());
                    break;
                }
                (pending_count, ack_due) = (0, None);
            }
        }
        let _ = self.ack(&mut pending).await;
        received
    }

    async fn ack(&mut self, pending: &mut Vec<AckRange>) -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let ranges = std::mem::take(pending);
        self.control
            .write_all(&Frame::Ack { ranges }.encode())
            .await?;
        Ok(())
    }
}

fn add_ack(pending: &mut Vec<AckRange>, group: String, seq: u64) {
    if let Some(range) = pending
        .iter_mut()
        .find(|r| r.group == group && r.last + 1 == seq)
    {
        range.last = seq;
        return;
    }
    pending.push(AckRange {
        group,
        first: seq,
        last: seq,
    });
}

/// What the members' connections carried during the run (QUIC's own counters).
#[derive(Default)]
pub struct Transport {
    /// UDP datagrams the members sent (QUIC ACKs and application ACKs together), and
    /// received from the gateway.
    pub sent: u64,
    pub received: u64,
    frames_sent: quinn::FrameStats,
    frames_received: quinn::FrameStats,
}

impl Transport {
    pub fn between(before: &[quinn::ConnectionStats], after: &[Connection]) -> Self {
        let mut t = Self::default();
        for (before, connection) in before.iter().zip(after) {
            let now = connection.stats();
            t.sent += now.udp_tx.datagrams - before.udp_tx.datagrams;
            t.received += now.udp_rx.datagrams - before.udp_rx.datagrams;
            add_frames(&mut t.frames_sent, &now.frame_tx, &before.frame_tx);
            add_frames(&mut t.frames_received, &now.frame_rx, &before.frame_rx);
        }
        t
    }

    /// The frames that matter here, for the log: where the packets went.
    pub fn frames(&self) -> String {
        let (tx, rx) = (&self.frames_sent, &self.frames_received);
        format!(
            "sent {} ACK, {} STREAM, {} PING; received {} ACK, {} STREAM, {} PING",
            tx.acks, tx.stream, tx.ping, rx.acks, rx.stream, rx.ping
        )
    }
}

fn add_frames(sum: &mut quinn::FrameStats, now: &quinn::FrameStats, before: &quinn::FrameStats) {
    sum.acks += now.acks - before.acks;
    sum.stream += now.stream - before.stream;
    sum.ping += now.ping - before.ping;
}
