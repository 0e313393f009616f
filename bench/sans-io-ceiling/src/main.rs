//! The quinn ceiling's server (`../shared/peers/quinn-ceiling`), same wire protocol and
//! flags, but on `quinn-proto` with one event loop instead of quinn's task per connection:
//! the loop reads the socket, feeds each datagram to its connection, writes a broadcast
//! into every connection's push stream, and polls each connection that has work for its
//! datagrams. No channels, no wakers, no timer per connection (one ordered set).
//!
//! An experiment (docs/BENCHMARKS.md, "Twelfth set"): how much of a delivery's CPU is
//! quinn's per-connection machinery, before anyone rebuilds the gateway on `quinn-proto`.

use std::collections::{BTreeSet, VecDeque};
use std::io::{IoSliceMut, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, EcnCodepoint, Endpoint, EndpointConfig, Event,
    ServerConfig, StreamEvent, StreamId, TransportConfig, VarInt,
};
use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;

const ALPN: &[u8] = b"quinn-ceiling/1";
const WELCOME_SEQ: u64 = u64::MAX;
const HEADER: usize = 16;
const HELLO_CTRL: u8 = b'C';
const GO: u8 = b'G';

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
    /// Messages broadcast per loop turn at --rate 0 before connections are polled (the
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

struct Member {
    conn: quinn_proto::Connection,
    push: Option<StreamId>,
    hello: Option<u8>,
    registered: bool,
    /// Frames the push stream has not taken yet.
    queue: VecDeque<Bytes>,
    finished: bool,
    timer: Option<Instant>,
    dirty: bool,
}

struct Server {
    args: Args,
    endpoint: Endpoint,
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    members: Vec<Option<Member>>,
    dirty: Vec<usize>,
    timers: BTreeSet<(Instant, usize)>,
    welcome: Bytes,
    registered: usize,
    /// Members whose queue is full: the broadcast waits for them.
    full: usize,
    go: bool,
    start: Option<(Instant, u64)>,
    next: u64,
    closed: usize,
    send_buf: Vec<u8>,
    max_segments: usize,
    /// Receive buffers (taken while a receive pass runs).
    rx: Option<(Vec<u8>, Vec<RecvMeta>)>,
}

/// Bytes per receive slot: a GRO batch of full datagrams.
const RX_CHUNK: usize = 64 * 1024;
/// Connections polled between two receive passes, so the socket does not overflow
/// while a broadcast is written into ten thousand streams.
const POLLS_PER_RECEIVE: usize = 256;

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
    socket.set_nonblocking(true)?;
    let state = UdpSocketState::new((&socket).into())?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {}", socket.local_addr()?)?;
        out.flush()?;
    }
    let max_segments = state.max_gso_segments();
    let welcome = frame(WELCOME_SEQ, 0, args.payload);
    let mut server = Server {
        endpoint: Endpoint::new(
            Arc::new(EndpointConfig::default()),
            Some(Arc::new(server_config)),
            true,
            None,
        ),
        socket,
        state,
        members: Vec::new(),
        dirty: Vec::new(),
        timers: BTreeSet::new(),
        welcome,
        registered: 0,
        full: 0,
        go: false,
        start: None,
        next: 0,
        closed: 0,
        send_buf: Vec::with_capacity(64 * 1024),
        max_segments,
        rx: Some((
            vec![0u8; quinn_udp::BATCH_SIZE * RX_CHUNK],
            vec![RecvMeta::default(); quinn_udp::BATCH_SIZE],
        )),
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
            self.fire_timers(now);
            let broadcasting = self.broadcast(now);
            self.poll_dirty().await;
            if self.closed >= self.args.members && self.next >= self.args.messages {
                return;
            }
            if broadcasting {
                continue;
            }
            self.wait(now).await;
        }
    }

    fn receive(&mut self) {
        let Some((mut storage, mut metas)) = self.rx.take() else {
            return;
        };
        self.receive_into(&mut storage, &mut metas);
        self.rx = Some((storage, metas));
    }

    fn receive_into(&mut self, storage: &mut [u8], metas: &mut [RecvMeta]) {
        let chunk = RX_CHUNK;
        let mut response = Vec::new();
        // A bounded number of batches per turn, so timers and sends keep their turn.
        for _ in 0..16 {
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.chunks_mut(chunk).map(IoSliceMut::new).collect();
            let received = self.socket.try_io(Interest::READABLE, || {
                self.state.recv((&self.socket).into(), &mut bufs, metas)
            });
            let Ok(count) = received else { return };
            let now = Instant::now();
            for (meta, buf) in metas.iter().zip(bufs.iter()).take(count) {
                let mut data = &buf[..meta.len];
                while !data.is_empty() {
                    let (segment, rest) = data.split_at(meta.stride.min(data.len()));
                    data = rest;
                    let ecn = meta.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
                    response.clear();
                    match self.endpoint.handle(
                        now,
                        meta.addr,
                        meta.dst_ip,
                        ecn,
                        BytesMut::from(segment),
                        &mut response,
                    ) {
                        Some(DatagramEvent::NewConnection(incoming)) => {
                            match self.endpoint.accept(incoming, now, &mut response, None) {
                                Ok((handle, conn)) => self.add(handle, conn),
                                Err(e) => {
                                    if let Some(t) = e.response {
                                        send_now(&self.socket, &self.state, &t, &response);
                                    }
                                }
                            }
                        }
                        Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                            if let Some(member) = self.members[handle.0].as_mut() {
                                member.conn.handle_event(event);
                                mark(&mut self.dirty, member, handle.0);
                            }
                        }
                        Some(DatagramEvent::Response(t)) => {
                            send_now(&self.socket, &self.state, &t, &response);
                        }
                        None => {}
                    }
                }
            }
        }
    }

    fn add(&mut self, handle: ConnectionHandle, conn: quinn_proto::Connection) {
        if self.members.len() <= handle.0 {
            self.members.resize_with(handle.0 + 1, || None);
        }
        let mut member = Member {
            conn,
            push: None,
            hello: None,
            registered: false,
            queue: VecDeque::new(),
            finished: false,
            timer: None,
            dirty: false,
        };
        mark(&mut self.dirty, &mut member, handle.0);
        self.members[handle.0] = Some(member);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(at, index)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(member) = self.members[index].as_mut() {
                member.timer = None;
                member.conn.handle_timeout(now);
                mark(&mut self.dirty, member, index);
            }
        }
    }

    /// Writes due messages into every queue; true if more can go at once.
    fn broadcast(&mut self, now: Instant) -> bool {
        let Some((start, start_ns)) = self.start else {
            return false;
        };
        let mut sent = 0;
        while self.next < self.args.messages && self.full == 0 && sent < self.args.batch {
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
            for (index, slot) in self.members.iter_mut().enumerate() {
                let Some(member) = slot.as_mut() else {
                    continue;
                };
                if !member.registered {
                    continue;
                }
                member.queue.push_back(f.clone());
                if member.queue.len() == self.args.queue {
                    self.full += 1;
                }
                mark(&mut self.dirty, member, index);
            }
            self.next += 1;
            sent += 1;
        }
        self.next < self.args.messages && self.full == 0 && self.args.rate == 0.0
    }

    async fn poll_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for (polled, &index) in dirty.iter().enumerate() {
            self.poll_member(index, Instant::now()).await;
            if polled % POLLS_PER_RECEIVE == POLLS_PER_RECEIVE - 1 {
                self.receive();
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    async fn poll_member(&mut self, index: usize, now: Instant) {
        let Some(member) = self.members[index].as_mut() else {
            return;
        };
        member.dirty = false;
        while let Some(event) = member.conn.poll() {
            match event {
                Event::Connected => open_push(member, &self.welcome),
                Event::Stream(StreamEvent::Available { dir: Dir::Uni }) => {
                    open_push(member, &self.welcome)
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    while let Some(id) = member.conn.streams().accept(Dir::Bi) {
                        read_control(member, id, &mut self.go);
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) => {
                    read_control(member, id, &mut self.go)
                }
                _ => {}
            }
        }
        if !member.registered && member.hello.is_some() && member.push.is_some() {
            member.registered = true;
            self.registered += 1;
            if self.registered == self.args.members {
                eprintln!(
                    "server: {} members connected, waiting for GO",
                    self.registered
                );
            }
        }
        if self.start.is_none() && self.go && self.registered >= self.args.members {
            self.start = Some((Instant::now(), mono_ns()));
        }
        // Push what the stream takes.
        if let Some(push) = member.push {
            let was_full = member.queue.len() >= self.args.queue;
            while !member.queue.is_empty() {
                let (front, _) = member.queue.as_mut_slices();
                let offered = front.len();
                match member.conn.send_stream(push).write_chunks(front) {
                    Ok(written) => {
                        member.queue.drain(..written.chunks);
                        if written.chunks < offered {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            if was_full && member.queue.len() < self.args.queue {
                self.full -= 1;
            }
            if !member.finished && member.queue.is_empty() && self.next >= self.args.messages {
                member.finished = member.conn.send_stream(push).finish().is_ok();
            }
        }
        while let Some(event) = member.conn.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(ConnectionHandle(index), event) {
                member.conn.handle_event(event);
            }
        }
        loop {
            self.send_buf.clear();
            let Some(t) = member
                .conn
                .poll_transmit(now, self.max_segments, &mut self.send_buf)
            else {
                break;
            };
            send(&self.socket, &self.state, &t, &self.send_buf).await;
        }
        let timer = member.conn.poll_timeout();
        if timer != member.timer {
            if let Some(old) = member.timer {
                self.timers.remove(&(old, index));
            }
            if let Some(new) = timer {
                self.timers.insert((new, index));
            }
            member.timer = timer;
        }
        if member.conn.is_drained() {
            if let Some(old) = member.timer {
                self.timers.remove(&(old, index));
            }
            if member.registered && member.queue.len() >= self.args.queue {
                self.full -= 1;
            }
            self.members[index] = None;
            self.closed += 1;
        }
    }

    async fn wait(&mut self, now: Instant) {
        let mut deadline = self.timers.first().map(|&(at, _)| at);
        if let Some((start, _)) = self.start
            && self.args.rate > 0.0
            && self.next < self.args.messages
            && self.full == 0
        {
            let due = start + Duration::from_secs_f64(self.next as f64 / self.args.rate);
            deadline = Some(deadline.map_or(due, |d| d.min(due)));
        }
        let deadline = deadline.unwrap_or(now + Duration::from_secs(1));
        tokio::select! {
            _ = self.socket.readable() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
}

fn mark(dirty: &mut Vec<usize>, member: &mut Member, index: usize) {
    if !member.dirty {
        member.dirty = true;
        dirty.push(index);
    }
}

fn open_push(member: &mut Member, welcome: &Bytes) {
    if member.push.is_none()
        && let Some(id) = member.conn.streams().open(Dir::Uni)
    {
        member.push = Some(id);
        member.queue.push_front(welcome.clone());
    }
}

fn read_control(member: &mut Member, id: StreamId, go: &mut bool) {
    let mut bytes = Vec::new();
    let mut stream = member.conn.recv_stream(id);
    if let Ok(mut chunks) = stream.read(true) {
        while let Ok(Some(chunk)) = chunks.next(64) {
            bytes.extend_from_slice(&chunk.bytes);
        }
        let _ = chunks.finalize();
    }
    for b in bytes {
        match member.hello {
            None => member.hello = Some(b),
            Some(HELLO_CTRL) if b == GO => *go = true,
            Some(_) => {}
        }
    }
}

fn udp_transmit<'a>(t: &quinn_proto::Transmit, buf: &'a [u8]) -> quinn_udp::Transmit<'a> {
    quinn_udp::Transmit {
        destination: t.destination,
        ecn: t
            .ecn
            .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
        contents: &buf[..t.size],
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    }
}

/// Sends, waiting for the socket while it is full.
async fn send(
    socket: &tokio::net::UdpSocket,
    state: &UdpSocketState,
    t: &quinn_proto::Transmit,
    buf: &[u8],
) {
    let transmit = udp_transmit(t, buf);
    loop {
        match socket.try_io(Interest::WRITABLE, || state.send(socket.into(), &transmit)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = socket.writable().await;
            }
            _ => return,
        }
    }
}

/// Sends a handshake response, dropping it if the socket is full (the client retries).
fn send_now(
    socket: &tokio::net::UdpSocket,
    state: &UdpSocketState,
    t: &quinn_proto::Transmit,
    buf: &[u8],
) {
    let transmit = udp_transmit(t, buf);
    let _ = socket.try_io(Interest::WRITABLE, || state.send(socket.into(), &transmit));
}
