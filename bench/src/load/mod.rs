//! The load: N members connected over QUIC speaking `chat/1` directly (a light client
//! per member: Hello, the push stream, batched ACKs under the Welcome's policy), and one
//! sender using the reference client library. Sender and members share this process,
//! so a message's body carries its send time on the process's monotonic clock; the sender
//! runs on a thread of its own (`run.rs`), as another device would.
//!
//! The members of one UDP socket share one event loop (`endpoint.rs`) on the gateway's
//! own QUIC core; each member's protocol is `member.rs`, without sockets.

mod endpoint;
mod member;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use endpoint::{Command, Joining};
pub use member::Seen;

/// Members per client socket, as the ceiling's load.
const MEMBERS_PER_SOCKET: usize = 1000;
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

/// Every member, joined and connected, on their sockets' loops.
pub struct Load {
    loops: Vec<mpsc::UnboundedSender<Command>>,
    ports: Vec<u16>,
}

/// What the members saw during a run, all together.
pub struct Received {
    pub seen: Seen,
    /// Members that failed or did not get every push before the deadline.
    pub errors: usize,
    pub first_error: Option<String>,
    pub transport: Transport,
}

impl Received {
    fn add(&mut self, seen: Seen, error: Option<String>) {
        self.seen.merge(seen);
        if let Some(error) = error {
            self.errors += 1;
            self.first_error.get_or_insert(error);
        }
    }

    fn merge(&mut self, other: Received) {
        self.seen.merge(other.seen);
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.transport.add(&other.transport);
    }
}

impl Load {
    /// Joins `users` (user i to `gateways[i % len]`) over sockets of `MEMBERS_PER_SOCKET`
    /// members each; with `background`, each keeps its groups in the background (`Focus`
    /// naming none). Returns once every member is welcomed.
    pub async fn join(
        gateways: &[SocketAddr],
        users: &[String],
        token: impl Fn(&str) -> String,
        background: bool,
        cert: &Path,
    ) -> anyhow::Result<Self> {
        let config = chat_client::quic_client_config(cert)?;
        let mut load = Self {
            loops: Vec::new(),
            ports: Vec::new(),
        };
        let mut joins = Vec::new();
        for (n, chunk) in users.chunks(MEMBERS_PER_SOCKET).enumerate() {
            let joining = chunk
                .iter()
                .enumerate()
                .map(|(i, user)| Joining {
                    gateway: gateways[(n * MEMBERS_PER_SOCKET + i) % gateways.len()],
                    token: token(user),
                })
                .collect();
            let socket = bind()?;
            load.ports.push(socket.local_addr()?.port());
            let (commands, joined) = endpoint::start(socket, config.clone(), joining, background)?;
            load.loops.push(commands);
            joins.push(joined);
        }
        for joined in joins {
            joined.await.context("a members' loop stopped")??;
        }
        Ok(load)
    }

    /// The members' local UDP ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Counts pushes from now on (not from the first poll of what it returns) until each
    /// member has `expected` unique ones or `deadline` passes.
    pub fn receive(
        &self,
        expected: u64,
        clock: Arc<Clock>,
        deadline: Instant,
    ) -> impl Future<Output = Received> + use<> {
        let replies: Vec<oneshot::Receiver<Received>> = self
            .loops
            .iter()
            .map(|commands| {
                let (reply, received) = oneshot::channel();
                let _ = commands.send(Command::Go {
                    expected,
                    clock: clock.clone(),
                    deadline,
                    reply,
                });
                received
            })
            .collect();
        async move {
            let mut all = Received {
                seen: Seen::default(),
                errors: 0,
                first_error: None,
                transport: Transport::default(),
            };
            for reply in replies {
                match reply.await {
                    Ok(received) => all.merge(received),
                    Err(_) => {
                        all.errors += 1;
                        all.first_error
                            .get_or_insert("a members' loop stopped".into());
                    }
                }
            }
            all
        }
    }
}

impl Drop for Load {
    /// Members stay connected until the load goes, so nobody's close costs the others.
    fn drop(&mut self) {
        for commands in &self.loops {
            let _ = commands.send(Command::Close);
        }
    }
}

/// A client socket with large buffers.
fn bind() -> anyhow::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    Ok(socket.into())
}

/// What the members' connections carried (QUIC's own counters).
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
    fn of(stats: impl Iterator<Item = quinn::ConnectionStats>) -> Self {
        let mut t = Self::default();
        for s in stats {
            t.sent += s.udp_tx.datagrams;
            t.received += s.udp_rx.datagrams;
            add_frames(&mut t.frames_sent, &s.frame_tx, 1);
            add_frames(&mut t.frames_received, &s.frame_rx, 1);
        }
        t
    }

    fn add(&mut self, other: &Self) {
        self.sent += other.sent;
        self.received += other.received;
        add_frames(&mut self.frames_sent, &other.frames_sent, 1);
        add_frames(&mut self.frames_received, &other.frames_received, 1);
    }

    /// What was carried since `before`.
    fn minus(mut self, before: &Self) -> Self {
        self.sent -= before.sent;
        self.received -= before.received;
        add_frames(&mut self.frames_sent, &before.frames_sent, -1);
        add_frames(&mut self.frames_received, &before.frames_received, -1);
        self
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

/// `sum += sign × other`, for the frame counts the log shows.
fn add_frames(sum: &mut quinn::FrameStats, other: &quinn::FrameStats, sign: i64) {
    let step = |a: &mut u64, b: u64| *a = a.wrapping_add_signed(sign * b as i64);
    step(&mut sum.acks, other.acks);
    step(&mut sum.stream, other.stream);
    step(&mut sum.ping, other.ping);
}
