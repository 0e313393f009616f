//! The socket loop around the [`Driver`], and [`Link`]: one connection as the gateway's
//! tasks see it.
//!
//! One task owns the socket and the driver. Tasks talk to it through one channel of
//! [`Command`]s (a write wakes the loop once for however many arrive together, not a
//! task per connection), and it answers through each link's shared state: control bytes
//! to read, how much of the control stream's queue is still unsent, how the connection
//! ended. Beside the transport the loop runs an [`Application`]: work that writes to many
//! connections at once (the gateway's pushers) runs there, with no task or lock per
//! connection between it and the streams.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{ConnectionError, ConnectionStats, EndpointConfig, ServerConfig, VarInt};
use tokio::sync::{mpsc, oneshot, watch};

use super::{ConnKey, Driver, Event, Flushed, Socket};

/// Socket reads per loop turn: bounded, so that timers and sends keep their turn.
const RECEIVE_BATCHES: usize = 16;
/// Connections flushed between two socket reads, so the socket does not overflow while a
/// fan-out goes out to ten thousand streams.
const FLUSH_BUDGET: usize = 256;
/// Unsent bytes of the control stream past which its writer waits (about what quinn's
/// send window held back before).
const STREAM_QUEUE_LIMIT: usize = 256 * 1024;
/// Control bytes read and not yet taken by the connection's task, past which the loop
/// stops reading the control stream (the client then meets its flow control).
const CONTROL_READ_LIMIT: usize = 256 * 1024;

/// Transport counters over connections, open and closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuicTotals {
    pub datagrams_sent: u64,
    /// System calls that sent them (one per datagram without GSO, fewer with it).
    pub send_calls: u64,
    pub bytes_sent: u64,
    pub datagrams_received: u64,
    pub bytes_received: u64,
    pub packets_lost: u64,
    pub congestion_events: u64,
}

impl QuicTotals {
    fn add(&mut self, stats: &ConnectionStats) {
        self.datagrams_sent += stats.udp_tx.datagrams;
        self.send_calls += stats.udp_tx.ios;
        self.bytes_sent += stats.udp_tx.bytes;
        self.datagrams_received += stats.udp_rx.datagrams;
        self.bytes_received += stats.udp_rx.bytes;
        self.packets_lost += stats.path.lost_packets;
        self.congestion_events += stats.path.congestion_events;
    }
}

/// Work that runs inside the loop, beside the transport: it has its own inbox, which the
/// loop polls, and writes push streams through [`Streams`] without a hop per connection.
pub trait Application: Send + 'static {
    /// Ready once work has arrived in the inbox; otherwise wakes `cx` when some does.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()>;
    /// Does what has arrived and what is due at `now`.
    fn run(&mut self, now: Instant, streams: &mut Streams<'_>);
    /// When `run` next has something due.
    fn next_timeout(&self) -> Option<Instant>;
}

/// The push streams, as an [`Application`] writes them.
pub struct Streams<'a> {
    driver: &'a mut Driver,
}

impl Streams<'_> {
    /// Opens `conn`'s push stream (the client sees it with its first bytes).
    pub fn open_push(&mut self, conn: ConnKey) -> bool {
        self.driver.open_push(conn)
    }

    /// Queues a frame on `conn`'s push stream; false if the connection is gone.
    pub fn write_push(&mut self, conn: ConnKey, frame: Bytes) -> bool {
        self.driver.write_push(conn, frame)
    }

    /// Bytes queued on `conn`'s push stream and not yet taken by it.
    pub fn push_unsent(&self, conn: ConnKey) -> usize {
        self.driver.unsent_bytes(conn).1
    }
}

/// A new connection, or one that did not become one.
pub enum Accepted {
    Link(Link),
    HandshakeFailed(ConnectionError),
    /// Refused while not accepting (draining).
    Refused,
}

enum Command {
    WriteControl(ConnKey, Bytes),
    /// The task took enough control bytes: read the stream again.
    ResumeControl(ConnKey),
    Close(ConnKey, VarInt, Bytes),
    Accepting(bool),
    CloseAll(VarInt, Bytes),
    Totals(oneshot::Sender<QuicTotals>),
    /// The endpoint handle is gone: send what is queued, then end.
    Stop,
}

/// The handle to a running endpoint loop.
pub struct Endpoint {
    commands: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
    /// Open connections, as the loop last counted them.
    open: watch::Receiver<usize>,
    /// The loop, until [`Endpoint::stop`] waits for it.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Endpoint {
    /// Starts the loop on `socket` (bound, any buffers set), running `app` beside the
    /// transport; new connections arrive on the returned receiver once their handshake
    /// completes.
    pub fn start(
        socket: std::net::UdpSocket,
        endpoint_config: EndpointConfig,
        server_config: Arc<ServerConfig>,
        app: Box<dyn Application>,
    ) -> std::io::Result<(Endpoint, mpsc::UnboundedReceiver<Accepted>)> {
        let socket = Socket::new(socket)?;
        let local_addr = socket.local_addr()?;
        let driver = Driver::new(endpoint_config, server_config, socket.max_datagrams());
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (accepted_tx, accepted) = mpsc::unbounded_channel();
        let (open_tx, open) = watch::channel(0);
        let run = Loop {
            driver,
            socket,
            app,
            links: HashMap::new(),
            waiting: HashSet::new(),
            commands: command_rx,
            own: commands.clone(),
            accepted: accepted_tx,
            open: open_tx,
            closed: QuicTotals::default(),
        };
        let task = tokio::spawn(run.run());
        Ok((
            Endpoint {
                commands,
                local_addr,
                open,
                task: Mutex::new(Some(task)),
            },
            accepted,
        ))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// While false, new connections are refused (a draining gateway).
    pub fn set_accepting(&self, accepting: bool) {
        let _ = self.commands.send(Command::Accepting(accepting));
    }

    /// Closes every connection with `code` and `reason`, and refuses new ones.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        let _ = self
            .commands
            .send(Command::CloseAll(code, Bytes::copy_from_slice(reason)));
    }

    /// Waits until no connection is open or closing (or the loop ended).
    pub async fn wait_idle(&self) {
        let mut open = self.open.clone();
        let _ = open.wait_for(|&n| n == 0).await;
    }

    /// Sends what is queued, ends the loop and waits until it has (the socket and the
    /// application are dropped with it).
    pub async fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
        let task = self.task.lock().expect("endpoint task lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Transport counters of every connection so far, open and closed.
    pub async fn totals(&self) -> QuicTotals {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Totals(tx));
        rx.await.unwrap_or_default()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::CloseAll(
            VarInt::from_u32(0),
            Bytes::from_static(b"endpoint dropped"),
        ));
        let _ = self.commands.send(Command::Stop);
    }
}

/// One connection for the gateway's tasks: its control stream to read and write, its
/// close (its push stream belongs to the [`Application`]). Clones share the
/// connection.
#[derive(Clone)]
pub struct Link {
    key: ConnKey,
    remote: SocketAddr,
    shared: Arc<Mutex<LinkState>>,
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Default)]
struct LinkState {
    control_in: std::collections::VecDeque<Bytes>,
    control_in_bytes: usize,
    /// The loop stopped reading the control stream until the task catches up.
    control_paused: bool,
    control_ended: bool,
    closed: Option<ConnectionError>,
    reader: Option<Waker>,
    /// Bytes queued for the control stream and not yet taken by it, and who waits for room.
    control_unsent: usize,
    control_writer: Option<Waker>,
}

impl LinkState {
    fn wake_all(&mut self) {
        for waker in [self.reader.take(), self.control_writer.take()]
            .into_iter()
            .flatten()
        {
            waker.wake();
        }
    }
}

/// The connection is gone.
#[derive(Debug, Clone, thiserror::Error)]
#[error("connection closed: {0}")]
pub struct Closed(pub ConnectionError);

impl Link {
    pub fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    /// The connection as the loop and its [`Application`] name it.
    pub fn key(&self) -> ConnKey {
        self.key
    }

    /// How the connection ended, once it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.state().closed.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.shared.lock().expect("link state lock")
    }

    /// The next bytes of the control stream; `None` once the client finished it or the
    /// connection closed.
    pub async fn read_control(&self) -> Option<Bytes> {
        std::future::poll_fn(|cx| {
            let mut state = self.state();
            if let Some(bytes) = self.take_control(&mut state) {
                return Poll::Ready(Some(bytes));
            }
            if state.control_ended || state.closed.is_some() {
                return Poll::Ready(None);
            }
            state.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Control bytes that have arrived already, without waiting.
    pub fn try_read_control(&self) -> Option<Bytes> {
        self.take_control(&mut self.state())
    }

    fn take_control(&self, state: &mut LinkState) -> Option<Bytes> {
        let bytes = state.control_in.pop_front()?;
        state.control_in_bytes -= bytes.len();
        if state.control_paused && state.control_in_bytes < CONTROL_READ_LIMIT / 2 {
            state.control_paused = false;
            let _ = self.commands.send(Command::ResumeControl(self.key));
        }
        Some(bytes)
    }

    /// Queues `bytes` on the control stream, waiting while too much is unsent.
    pub async fn write_control(&self, bytes: Bytes) -> Result<(), Closed> {
        self.room().await?;
        self.queue(bytes.len())?;
        self.send(Command::WriteControl(self.key, bytes))
    }

    /// Closes the connection with an application `code` and `reason`.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        let _ = self.send(Command::Close(
            self.key,
            code,
            Bytes::copy_from_slice(reason),
        ));
    }

    /// Counts `bytes` as unsent on the control stream (the loop sets the true figure after
    /// its next flush), unless the connection is gone.
    fn queue(&self, bytes: usize) -> Result<(), Closed> {
        let mut state = self.state();
        if let Some(reason) = &state.closed {
            return Err(Closed(reason.clone()));
        }
        state.control_unsent += bytes;
        Ok(())
    }

    /// Sends `command` to the loop; the loop drops what names a connection gone.
    fn send(&self, command: Command) -> Result<(), Closed> {
        self.commands
            .send(command)
            .map_err(|_| Closed(ConnectionError::LocallyClosed))
    }

    async fn room(&self) -> Result<(), Closed> {
        std::future::poll_fn(|cx| {
            let mut state = self.state();
            if let Some(reason) = &state.closed {
                return Poll::Ready(Err(Closed(reason.clone())));
            }
            if state.control_unsent < STREAM_QUEUE_LIMIT {
                return Poll::Ready(Ok(()));
            }
            state.control_writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

struct Loop {
    driver: Driver,
    socket: Socket,
    app: Box<dyn Application>,
    links: HashMap<ConnKey, Arc<Mutex<LinkState>>>,
    /// Links with control bytes their stream has not taken yet, checked after each flush.
    waiting: HashSet<ConnKey>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// For the links it hands out.
    own: mpsc::UnboundedSender<Command>,
    accepted: mpsc::UnboundedSender<Accepted>,
    open: watch::Sender<usize>,
    /// What connections that drained had counted (the others are read from the driver).
    closed: QuicTotals,
}

impl Loop {
    async fn run(mut self) {
        let mut commands = Vec::new();
        let mut stopping = false;
        loop {
            self.socket.receive(&mut self.driver, RECEIVE_BATCHES);
            self.driver.handle_timeouts(Instant::now());
            for command in commands.drain(..) {
                stopping |= matches!(command, Command::Stop);
                self.apply(command);
            }
            self.app.run(
                Instant::now(),
                &mut Streams {
                    driver: &mut self.driver,
                },
            );
            let flushed = loop {
                let flushed = self
                    .driver
                    .flush(Instant::now(), &mut self.socket, FLUSH_BUDGET);
                self.events();
                if flushed != Flushed::Budget {
                    break flushed;
                }
                self.socket.receive_now(&mut self.driver, RECEIVE_BATCHES);
            };
            self.wake_writers();
            let open = self.driver.connections();
            self.open
                .send_if_modified(|n| std::mem::replace(n, open) != open);
            if stopping {
                // The closes are out; the socket goes with this task.
                return;
            }
            let deadline = [self.driver.next_timeout(), self.app.next_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let app = &mut self.app;
            tokio::select! {
                _ = self.socket.writable(), if flushed == Flushed::SocketFull => {}
                _ = self.socket.readable() => {}
                _ = self.commands.recv_many(&mut commands, 1024) => {}
                _ = std::future::poll_fn(|cx| app.poll_ready(cx)) => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::WriteControl(key, bytes) => {
                self.driver.write_control(key, bytes);
                self.waiting.insert(key);
            }
            Command::ResumeControl(key) => self.driver.pause_control(key, false),
            Command::Close(key, code, reason) => {
                self.driver.close(Instant::now(), key, code, &reason);
            }
            Command::Accepting(accepting) => self.driver.set_accepting(accepting),
            Command::CloseAll(code, reason) => {
                self.driver.set_accepting(false);
                let now = Instant::now();
                for key in self.links.keys().copied().collect::<Vec<_>>() {
                    self.driver.close(now, key, code, &reason);
                }
            }
            Command::Stop => {}
            Command::Totals(reply) => {
                let mut totals = self.closed;
                for stats in self.driver.connected_stats() {
                    totals.add(&stats);
                }
                let _ = reply.send(totals);
            }
        }
    }

    fn events(&mut self) {
        while let Some(event) = self.driver.poll_event() {
            match event {
                Event::Connected { conn, remote } => {
                    let shared = Arc::new(Mutex::new(LinkState::default()));
                    self.links.insert(conn, shared.clone());
                    let link = Link {
                        key: conn,
                        remote,
                        shared,
                        commands: self.own.clone(),
                    };
                    if self.accepted.send(Accepted::Link(link)).is_err() {
                        // Nobody accepts any more (the gateway is stopping).
                        self.driver.close(
                            Instant::now(),
                            conn,
                            VarInt::from_u32(0),
                            b"not accepting",
                        );
                    }
                }
                Event::Control { conn, bytes } => {
                    if let Some(shared) = self.links.get(&conn) {
                        let mut state = shared.lock().expect("link state lock");
                        state.control_in_bytes += bytes.len();
                        state.control_in.push_back(bytes);
                        if state.control_in_bytes >= CONTROL_READ_LIMIT && !state.control_paused {
                            state.control_paused = true;
                            self.driver.pause_control(conn, true);
                        }
                        if let Some(reader) = state.reader.take() {
                            reader.wake();
                        }
                    }
                }
                Event::ControlEnded { conn } => {
                    if let Some(shared) = self.links.get(&conn) {
                        let mut state = shared.lock().expect("link state lock");
                        state.control_ended = true;
                        if let Some(reader) = state.reader.take() {
                            reader.wake();
                        }
                    }
                }
                Event::Drained { stats, .. } => self.closed.add(&stats),
                Event::Closed { conn, reason } => {
                    if let Some(shared) = self.links.remove(&conn) {
                        let mut state = shared.lock().expect("link state lock");
                        state.closed = Some(reason);
                        state.wake_all();
                    }
                }
                Event::HandshakeFailed { reason } => {
                    let _ = self.accepted.send(Accepted::HandshakeFailed(reason));
                }
                Event::Refused { .. } => {
                    let _ = self.accepted.send(Accepted::Refused);
                }
                // A client's end only.
                Event::Push { .. } | Event::PushEnded { .. } => {}
            }
        }
    }

    /// Tells each link with unsent control bytes how much its stream still holds, waking
    /// the writer once there is room; links whose stream took everything leave the list.
    fn wake_writers(&mut self) {
        let (driver, links) = (&self.driver, &self.links);
        self.waiting.retain(|key| {
            let Some(shared) = links.get(key) else {
                return false;
            };
            let (control, _) = driver.unsent_bytes(*key);
            let mut state = shared.lock().expect("link state lock");
            state.control_unsent = control;
            if control < STREAM_QUEUE_LIMIT
                && let Some(writer) = state.control_writer.take()
            {
                writer.wake();
            }
            control > 0
        });
    }
}
