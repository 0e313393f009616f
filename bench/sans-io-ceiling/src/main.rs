//! The quinn ceiling's server (`../shared/peers/quinn-ceiling`), same wire protocol and
//! flags, on the gateway's `quic::Driver`: one event loop instead of quinn's task per
//! connection. The loop reads the socket into the driver, writes a broadcast into every
//! member's push stream, and flushes the driver between reads. No channels, no wakers, no
//! timer per connection.
//!
//! An experiment (docs/BENCHMARKS.md, twelfth set): what the gateway's transport saves
//! once it runs on the driver, measured before the gateway does.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use chat_gateway::quic::{ConnKey, Driver, Event, Flushed, Socket};
use clap::Parser;
use quinn_proto::{EndpointConfig, ServerConfig, TransportConfig, VarInt};

const ALPN: &[u8] = b"quinn-ceiling/1";
const WELCOME_SEQ: u64 = u64::MAX;
const HEADER: usize = 16;
const HELLO_CTRL: u8 = b'C';
const GO: u8 = b'G';
/// Connections flushed between two socket reads, so the socket does not overflow while
/// a broadcast goes out to ten thousand streams.
const FLUSH_BUDGET: usize = 256;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    #[arg(long)]
    members: usize,
    #[arg(long)]
    messages: u64,
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Frames queued per connection before the broadcast waits (the ceiling's --queue).
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Messages broadcast per loop turn at --rate 0 before connections are flushed (the
    /// ceiling's writer hands quinn up to 32 frames per write).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long)]
    cert_out: PathBuf,
    #[arg(long, default_value_t = 4096)]
    udp_buf_kb: usize,
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec; CLOCK_MONOTONIC exists on Linux (the load's clock).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn frame(seq: u64, ts_ns: u64, payload: usize) -> Bytes {
    let payload = payload.max(HEADER);
    let mut b = BytesMut::with_capacity(4 + payload);
    b.put_u32_le(payload as u32);
    b.put_u64_le(seq);
    b.put_u64_le(ts_ns);
    b.resize(4 + payload, 0x5a);
    b.freeze()
}

#[derive(Default)]
struct Member {
    hello: Option<u8>,
}

struct Server {
    args: Args,
    driver: Driver,
    socket: Socket,
    members: HashMap<ConnKey, Member>,
    /// Members with their push stream open, in the order they registered.
    registered: Vec<ConnKey>,
    welcome: Bytes,
    go: bool,
    start: Option<(Instant, u64)>,
    next: u64,
    closed: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert = ck.cert.der().clone();
    std::fs::write(&args.cert_out, cert.as_ref())?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server_config = ServerConfig::with_crypto(Arc::new(quic));
    // The ceiling's transport settings.
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    t.stream_receive_window(VarInt::from_u32(64 * 1024));
    t.receive_window(VarInt::from_u32(256 * 1024));
    t.send_window(256 * 1024);
    t.datagram_receive_buffer_size(None);
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    server_config.transport_config(Arc::new(t));
    server_config.migration(false);

    let socket = std::net::UdpSocket::bind(args.listen)?;
    let sock2 = socket2::SockRef::from(&socket);
    let _ = sock2.set_recv_buffer_size(args.udp_buf_kb * 1024);
    let _ = sock2.set_send_buffer_size(args.udp_buf_kb * 1024);
    let socket = Socket::new(socket)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {}", socket.local_addr()?)?;
        out.flush()?;
    }
    let driver = Driver::new(
        EndpointConfig::default(),
        Arc::new(server_config),
        socket.max_datagrams(),
    );
    let mut server = Server {
        driver,
        socket,
        members: HashMap::new(),
        registered: Vec::new(),
        welcome: frame(WELCOME_SEQ, 0, args.payload),
        go: false,
        start: None,
        next: 0,
        closed: 0,
        args,
    };
    server.run().await;
    eprintln!("server: done");
    Ok(())
}

impl Server {
    async fn run(&mut self) {
        loop {
            self.receive();
            let now = Instant::now();
            self.driver.handle_timeouts(now);
            self.events();
            let broadcasting = self.broadcast(now);
            let mut flushed;
            loop {
                flushed = self
                    .driver
                    .flush(Instant::now(), &mut self.socket, FLUSH_BUDGET);
                self.events();
                if flushed != Flushed::Budget {
                    break;
                }
                self.receive();
            }
            if self.closed >= self.args.members && self.next >= self.args.messages {
                return;
            }
            if flushed == Flushed::SocketFull {
                self.socket.writable().await;
            } else if !broadcasting {
                self.wait(now).await;
            }
        }
    }

    fn receive(&mut self) {
        // A bounded number of reads per turn, so timers and sends keep their turn.
        self.socket.receive(&mut self.driver, 16);
    }

    fn events(&mut self) {
        while let Some(event) = self.driver.poll_event() {
            match event {
                Event::Connected { conn, .. } => {
                    self.members.insert(conn, Member::default());
                }
                Event::Control { conn, bytes } => self.control(conn, &bytes),
                Event::Closed { conn, .. } => {
                    self.members.remove(&conn);
                    self.closed += 1;
                }
                _ => {}
            }
        }
    }

    fn control(&mut self, conn: ConnKey, bytes: &[u8]) {
        let Some(member) = self.members.get_mut(&conn) else {
            return;
        };
        for &b in bytes {
            match member.hello {
                None => {
                    member.hello = Some(b);
                    self.driver.open_push(conn);
                    self.driver.write_push(conn, self.welcome.clone());
                    self.registered.push(conn);
                    if self.registered.len() == self.args.members {
                        eprintln!(
                            "server: {} members connected, waiting for GO",
                            self.args.members
                        );
                    }
                }
                Some(HELLO_CTRL) if b == GO => self.go = true,
                Some(_) => {}
            }
        }
        if self.start.is_none() && self.go && self.registered.len() >= self.args.members {
            self.start = Some((Instant::now(), mono_ns()));
        }
    }

    /// Writes due messages into every push stream while no member's queue is full;
    /// true if more can go at once.
    fn broadcast(&mut self, now: Instant) -> bool {
        let Some((start, start_ns)) = self.start else {
            return false;
        };
        let mut sent = 0;
        while self.next < self.args.messages && sent < self.args.batch && !self.full() {
            let ts = if self.args.rate > 0.0 {
                let offset = Duration::from_secs_f64(self.next as f64 / self.args.rate);
                if start + offset > now {
                    return false;
                }
                start_ns + offset.as_nanos() as u64
            } else {
                mono_ns()
            };
            let f = frame(self.next, ts, self.args.payload);
            for &conn in &self.registered {
                self.driver.write_push(conn, f.clone());
            }
            self.next += 1;
            sent += 1;
        }
        self.next < self.args.messages && self.args.rate == 0.0 && !self.full()
    }

    /// Some member has a full queue: the broadcast waits for it, as the ceiling's does.
    fn full(&self) -> bool {
        self.registered
            .iter()
            .any(|&conn| self.driver.push_queued(conn) >= self.args.queue)
    }

    async fn wait(&mut self, now: Instant) {
        let mut deadline = self.driver.next_timeout();
        if let Some((start, _)) = self.start
            && self.args.rate > 0.0
            && self.next < self.args.messages
        {
            let due = start + Duration::from_secs_f64(self.next as f64 / self.args.rate);
            deadline = Some(deadline.map_or(due, |d| d.min(due)));
        }
        let deadline = deadline.unwrap_or(now + Duration::from_millis(100));
        tokio::select! {
            _ = self.socket.readable() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}
