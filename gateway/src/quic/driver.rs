//! Every connection of one endpoint on one event loop, without sockets.
//!
//! quinn runs each connection on a task of its own, fed by channels from the endpoint's
//! task and woken by a timer of its own; for a fan-out that touches every connection per
//! message, that machinery costs more than the QUIC work itself (docs/BENCHMARKS.md,
//! twelfth set: the same broadcast on one loop took 0.75 × the CPU per delivery). Here the
//! caller's loop hands in datagrams and the time, and the [`Driver`] hands back what to
//! send and what happened. Only the connections touched since the last [`Driver::flush`]
//! are polled, and all timeouts live in one ordered set.
//!
//! The streams are the gateway's (docs/protocol.md): the client opens one bidirectional
//! *control* stream, the gateway opens one unidirectional *push* stream. The driver runs
//! either end: the gateway's ([`Driver::new`]: accepts, reads control, writes both) or
//! many members' ([`Driver::client`]: connects, writes control, reads both), which is how
//! chat-bench's load generator drives thousands of members on one loop.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, ConnectError, ConnectionError, ConnectionHandle, ConnectionStats, DatagramEvent,
    Dir, EcnCodepoint, Endpoint, EndpointConfig, ServerConfig, StreamEvent, StreamId, Transmit,
    VarInt,
};

/// Most bytes of a stream handed over per [`Event::Control`] or [`Event::Push`].
const STREAM_READ: usize = 64 * 1024;

/// A connection, as long as it lives: a key whose connection is gone matches nothing,
/// even after its slot holds a newer connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    index: u32,
    generation: u32,
}

impl ConnKey {
    #[cfg(test)]
    pub(super) fn slot(self) -> u32 {
        self.index
    }
}

/// What happened, for the caller's loop to act on.
#[derive(Debug)]
pub enum Event {
    /// The handshake completed.
    Connected { conn: ConnKey, remote: SocketAddr },
    /// Bytes of the control stream, in order.
    Control { conn: ConnKey, bytes: Bytes },
    /// The client finished or reset its control stream.
    ControlEnded { conn: ConnKey },
    /// Bytes of the push stream, in order (at a client).
    Push { conn: ConnKey, bytes: Bytes },
    /// The gateway finished or reset its push stream (at a client).
    PushEnded { conn: ConnKey },
    /// The connection is gone (after [`Event::Connected`] only); its key is dead.
    Closed {
        conn: ConnKey,
        reason: ConnectionError,
    },
    /// A closed connection (one that was [`Event::Connected`]) has finished closing and
    /// left the driver, with its transport counters as they ended.
    Drained {
        conn: ConnKey,
        stats: Box<ConnectionStats>,
    },
    /// A handshake failed.
    HandshakeFailed { reason: ConnectionError },
    /// A new connection was refused (while not accepting).
    Refused { remote: SocketAddr },
}

/// How far a [`Driver::flush`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Every touched connection was polled.
    All,
    /// The budget ran out first: flush again soon.
    Budget,
    /// The socket is full: flush again once it is writable.
    SocketFull,
}

/// Where datagrams go. `false`: the socket is full; the driver keeps the datagram and
/// sends it first at the next [`Driver::flush`].
pub trait Transmitter {
    fn send(&mut self, transmit: &Transmit, contents: &[u8]) -> bool;
}

pub struct Driver {
    endpoint: Endpoint,
    /// None at a client's end.
    server_config: Option<Arc<ServerConfig>>,
    accepting: bool,
    slots: Vec<Slot>,
    /// Slots holding a connection.
    live: usize,
    /// Connections touched since they were last polled, in the order they were.
    dirty: VecDeque<usize>,
    timers: BTreeSet<(Instant, usize)>,
    events: VecDeque<Event>,
    /// A datagram the socket did not take (its connection stays dirty).
    unsent: Option<(Transmit, Vec<u8>)>,
    buf: Vec<u8>,
    /// Datagrams per transmit: more than one where the socket does GSO.
    max_datagrams: usize,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

struct Conn {
    inner: quinn_proto::Connection,
    connected: bool,
    /// `Closed` was reported (or, never connected, is not to be).
    ended: bool,
    control: Option<StreamId>,
    /// Open the control stream as soon as the server allows it (at a client).
    control_wanted: bool,
    /// The caller holds enough unread control bytes: leave the rest in the stream, so
    /// its flow control holds the client back.
    control_paused: bool,
    /// Read the control stream at the next poll (it may hold bytes left while paused).
    control_unread: bool,
    control_out: Outbox,
    push: Option<StreamId>,
    push_wanted: bool,
    /// Read the push stream at the next poll (at a client).
    push_unread: bool,
    push_out: Outbox,
    timer: Option<Instant>,
    dirty: bool,
}

impl Driver {
    /// The gateway's end. `max_datagrams`: what one send may carry (`quinn::udp`'s GSO
    /// segments, 1 without).
    pub fn new(
        endpoint_config: EndpointConfig,
        server_config: Arc<ServerConfig>,
        max_datagrams: usize,
    ) -> Self {
        Self::with_server(endpoint_config, Some(server_config), max_datagrams)
    }

    /// The clients' end: connections start with [`Driver::connect`]; nothing is accepted.
    pub fn client(endpoint_config: EndpointConfig, max_datagrams: usize) -> Self {
        Self::with_server(endpoint_config, None, max_datagrams)
    }

    fn with_server(
        endpoint_config: EndpointConfig,
        server_config: Option<Arc<ServerConfig>>,
        max_datagrams: usize,
    ) -> Self {
        Self {
            endpoint: Endpoint::new(Arc::new(endpoint_config), server_config.clone(), true, None),
            accepting: server_config.is_some(),
            server_config,
            slots: Vec::new(),
            live: 0,
            dirty: VecDeque::new(),
            timers: BTreeSet::new(),
            events: VecDeque::new(),
            unsent: None,
            buf: Vec::new(),
            max_datagrams: max_datagrams.max(1),
        }
    }

    /// While false, new connections are refused (a draining gateway). A client's end
    /// never accepts.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting && self.server_config.is_some();
    }

    /// Starts a connection to a gateway; its control stream opens once the handshake
    /// allows, with what [`Driver::write_control`] queued meanwhile first on it.
    /// [`Event::Connected`] follows (or [`Event::HandshakeFailed`]).
    pub fn connect(
        &mut self,
        now: Instant,
        config: ClientConfig,
        remote: SocketAddr,
        server_name: &str,
    ) -> Result<ConnKey, ConnectError> {
        let (handle, inner) = self.endpoint.connect(now, config, remote, server_name)?;
        self.insert(handle, inner).control_wanted = true;
        Ok(self.key(handle.0))
    }

    /// The key of the connection now in slot `index`.
    fn key(&self, index: usize) -> ConnKey {
        ConnKey {
            index: index as u32,
            generation: self.slots[index].generation,
        }
    }

    /// Connections open or closing.
    pub fn connections(&self) -> usize {
        self.live
    }

    /// One received datagram (one GRO segment). Stateless answers (version negotiation,
    /// refusals, resets) go out at once, or are dropped if the socket is full.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        data: BytesMut,
        tx: &mut impl Transmitter,
    ) {
        let mut response = Vec::new();
        match self
            .endpoint
            .handle(now, remote, local_ip, ecn, data, &mut response)
        {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(conn) = self.slots[handle.0].conn.as_mut() {
                    conn.inner.handle_event(event);
                    mark(&mut self.dirty, conn, handle.0);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if !self.accepting {
                    let transmit = self.endpoint.refuse(incoming, &mut response);
                    tx.send(&transmit, &response[..transmit.size]);
                    self.events.push_back(Event::Refused { remote });
                    return;
                }
                let config = self.server_config.clone();
                match self.endpoint.accept(incoming, now, &mut response, config) {
                    Ok((handle, inner)) => {
                        self.insert(handle, inner);
                    }
                    Err(error) => {
                        if let Some(transmit) = error.response {
                            tx.send(&transmit, &response[..transmit.size]);
                        }
                        self.events.push_back(Event::HandshakeFailed {
                            reason: error.cause,
                        });
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => {
                tx.send(&transmit, &response[..transmit.size]);
            }
            None => {}
        }
    }

    fn insert(&mut self, handle: ConnectionHandle, inner: quinn_proto::Connection) -> &mut Conn {
        if self.slots.len() <= handle.0 {
            self.slots.resize_with(handle.0 + 1, Slot::default);
        }
        let slot = &mut self.slots[handle.0];
        slot.generation = slot.generation.wrapping_add(1);
        self.live += 1;
        let conn = slot.conn.insert(Conn {
            inner,
            connected: false,
            ended: false,
            control: None,
            control_wanted: false,
            control_paused: false,
            control_unread: false,
            control_out: Outbox::default(),
            push: None,
            push_wanted: false,
            push_unread: false,
            push_out: Outbox::default(),
            timer: None,
            dirty: false,
        });
        mark(&mut self.dirty, conn, handle.0);
        conn
    }

    /// The earliest moment [`Driver::handle_timeouts`] has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    pub fn handle_timeouts(&mut self, now: Instant) {
        while let Some(&(at, index)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(conn) = self.slots[index].conn.as_mut() {
                conn.timer = None;
                conn.inner.handle_timeout(now);
                mark(&mut self.dirty, conn, index);
            }
        }
    }

    /// What happened since the last call, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn conn_mut(&mut self, key: ConnKey) -> Option<(&mut Conn, usize)> {
        let index = key.index as usize;
        let slot = self.slots.get_mut(index)?;
        if slot.generation != key.generation {
            return None;
        }
        let conn = slot.conn.as_mut().filter(|c| !c.ended)?;
        mark(&mut self.dirty, conn, index);
        Some((conn, index))
    }

    /// Queues bytes for the control stream; false if the connection is gone.
    pub fn write_control(&mut self, key: ConnKey, bytes: Bytes) -> bool {
        self.conn_mut(key)
            .map(|(conn, _)| conn.control_out.push(bytes))
            .is_some()
    }

    /// Opens the push stream (as soon as the client allows it); false if the connection is gone.
    pub fn open_push(&mut self, key: ConnKey) -> bool {
        self.conn_mut(key)
            .map(|(conn, _)| conn.push_wanted = true)
            .is_some()
    }

    /// Queues a frame for the push stream; false if the connection is gone.
    pub fn write_push(&mut self, key: ConnKey, bytes: Bytes) -> bool {
        self.conn_mut(key)
            .map(|(conn, _)| conn.push_out.push(bytes))
            .is_some()
    }

    /// Stops (or resumes) reading the control stream: while paused, what the client
    /// sends waits in the stream and its flow control stops the client.
    pub fn pause_control(&mut self, key: ConnKey, paused: bool) {
        if let Some((conn, _)) = self.conn_mut(key) {
            conn.control_paused = paused;
            conn.control_unread |= !paused;
        }
    }

    /// Push frames the stream has not taken yet (flow control, congestion).
    pub fn push_queued(&self, key: ConnKey) -> usize {
        self.conn(key).map_or(0, |conn| conn.push_out.frames.len())
    }

    /// Bytes queued on the control and the push stream that the streams have not taken.
    pub fn unsent_bytes(&self, key: ConnKey) -> (usize, usize) {
        self.conn(key)
            .map_or((0, 0), |conn| (conn.control_out.bytes, conn.push_out.bytes))
    }

    /// The connection `key` names, if it is still the one in its slot.
    fn conn(&self, key: ConnKey) -> Option<&Conn> {
        self.slots
            .get(key.index as usize)
            .filter(|slot| slot.generation == key.generation)?
            .conn
            .as_ref()
    }

    /// The transport counters of every connection that connected and has not drained
    /// (the drained ones were handed over in [`Event::Drained`]).
    pub fn connected_stats(&self) -> impl Iterator<Item = ConnectionStats> + '_ {
        self.slots
            .iter()
            .filter_map(|slot| slot.conn.as_ref())
            .filter(|conn| conn.connected)
            .map(|conn| conn.inner.stats())
    }

    /// Closes with an application code and reason; [`Event::Closed`] follows with
    /// `LocallyClosed`. What was queued and not yet sent is dropped.
    pub fn close(&mut self, now: Instant, key: ConnKey, code: VarInt, reason: &[u8]) {
        let Some((conn, _)) = self.conn_mut(key) else {
            return;
        };
        conn.inner.close(now, code, Bytes::copy_from_slice(reason));
        conn.ended = true;
        self.events.push_back(Event::Closed {
            conn: key,
            reason: ConnectionError::LocallyClosed,
        });
    }

    /// Polls the connections touched since the last flush, oldest first, at most
    /// `budget` of them (a caller's loop reads its socket in between): their events, their
    /// queued writes, their datagrams, their next timeout.
    pub fn flush(&mut self, now: Instant, tx: &mut impl Transmitter, budget: usize) -> Flushed {
        if let Some((transmit, contents)) = self.unsent.take()
            && !tx.send(&transmit, &contents[..transmit.size])
        {
            self.unsent = Some((transmit, contents));
            return Flushed::SocketFull;
        }
        for _ in 0..budget {
            let Some(index) = self.dirty.pop_front() else {
                return Flushed::All;
            };
            if !self.poll_conn(index, now, tx) {
                self.dirty.push_front(index);
                return Flushed::SocketFull;
            }
        }
        if self.dirty.is_empty() {
            Flushed::All
        } else {
            Flushed::Budget
        }
    }

    /// False if the socket filled up (the connection stays dirty).
    fn poll_conn(&mut self, index: usize, now: Instant, tx: &mut impl Transmitter) -> bool {
        let key = self.key(index);
        let Some(conn) = self.slots[index].conn.as_mut() else {
            return true;
        };
        conn.dirty = false;
        while let Some(event) = conn.inner.poll() {
            match event {
                quinn_proto::Event::Connected => {
                    conn.connected = true;
                    self.events.push_back(Event::Connected {
                        conn: key,
                        remote: conn.inner.remote_address(),
                    });
                }
                quinn_proto::Event::ConnectionLost { reason } if !conn.ended => {
                    conn.ended = true;
                    self.events.push_back(if conn.connected {
                        Event::Closed { conn: key, reason }
                    } else {
                        Event::HandshakeFailed { reason }
                    });
                }
                // The peer's first stream of the kind its side opens: the gateway's
                // transport allows no second control stream; the gateway opens one push.
                quinn_proto::Event::Stream(StreamEvent::Opened { dir }) => {
                    let server = conn.inner.side().is_server();
                    match (dir, conn.inner.streams().accept(dir)) {
                        (Dir::Bi, Some(id)) if server => {
                            conn.control.get_or_insert(id);
                            conn.control_unread = true;
                        }
                        (Dir::Uni, Some(id)) if !server => {
                            conn.push.get_or_insert(id);
                            conn.push_unread = true;
                        }
                        _ => {}
                    }
                }
                quinn_proto::Event::Stream(StreamEvent::Readable { id }) => {
                    conn.control_unread |= Some(id) == conn.control;
                    conn.push_unread |= Some(id) == conn.push;
                }
                _ => {}
            }
        }
        if conn.control_unread && !conn.control_paused {
            conn.control_unread = false;
            if read_stream(&mut conn.inner, conn.control, |bytes| {
                self.events.push_back(Event::Control { conn: key, bytes })
            }) {
                self.events.push_back(Event::ControlEnded { conn: key });
            }
        }
        if conn.push_unread {
            conn.push_unread = false;
            if read_stream(&mut conn.inner, conn.push, |bytes| {
                self.events.push_back(Event::Push { conn: key, bytes })
            }) {
                self.events.push_back(Event::PushEnded { conn: key });
            }
        }
        if !conn.ended {
            write_streams(conn);
        }
        while let Some(event) = conn.inner.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(ConnectionHandle(index), event) {
                conn.inner.handle_event(event);
            }
        }
        loop {
            self.buf.clear();
            let Some(transmit) = conn
                .inner
                .poll_transmit(now, self.max_datagrams, &mut self.buf)
            else {
                break;
            };
            if !tx.send(&transmit, &self.buf[..transmit.size]) {
                self.unsent = Some((transmit, std::mem::take(&mut self.buf)));
                // Polled again first at the next flush.
                conn.dirty = true;
                return false;
            }
        }
        let timeout = conn.inner.poll_timeout();
        if timeout != conn.timer {
            if let Some(old) = conn.timer {
                self.timers.remove(&(old, index));
            }
            if let Some(new) = timeout {
                self.timers.insert((new, index));
            }
            conn.timer = timeout;
        }
        if conn.inner.is_drained() {
            if let Some(old) = conn.timer {
                self.timers.remove(&(old, index));
            }
            if conn.connected {
                self.events.push_back(Event::Drained {
                    conn: key,
                    stats: Box::new(conn.inner.stats()),
                });
            }
            self.slots[index].conn = None;
            self.live -= 1;
        }
        true
    }
}

fn mark(dirty: &mut VecDeque<usize>, conn: &mut Conn, index: usize) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push_back(index);
    }
}

/// Hands what a stream has to `deliver`, chunk by chunk; true once it has ended
/// (finished or reset).
fn read_stream(
    inner: &mut quinn_proto::Connection,
    id: Option<StreamId>,
    mut deliver: impl FnMut(Bytes),
) -> bool {
    let Some(id) = id else { return false };
    let mut stream = inner.recv_stream(id);
    let Ok(mut chunks) = stream.read(true) else {
        return false;
    };
    let mut ended = false;
    loop {
        match chunks.next(STREAM_READ) {
            Ok(Some(chunk)) => deliver(chunk.bytes),
            Ok(None) | Err(quinn_proto::ReadError::Reset(_)) => {
                ended = true;
                break;
            }
            Err(quinn_proto::ReadError::Blocked) => break,
        }
    }
    // Whether to send a flow-control update is decided at the next poll_transmit.
    let _ = chunks.finalize();
    ended
}

/// Opens the streams this end opens, and writes what they take of the queued frames.
fn write_streams(conn: &mut Conn) {
    if conn.push.is_none() && conn.push_wanted {
        conn.push = conn.inner.streams().open(Dir::Uni);
    }
    if conn.control.is_none() && conn.control_wanted {
        conn.control = conn.inner.streams().open(Dir::Bi);
    }
    if let Some(id) = conn.control {
        write_queued(&mut conn.inner, id, &mut conn.control_out);
    }
    if let Some(id) = conn.push {
        write_queued(&mut conn.inner, id, &mut conn.push_out);
    }
}

/// Frames for one stream that it has not taken yet.
#[derive(Default)]
struct Outbox {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl Outbox {
    fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }
}

fn write_queued(inner: &mut quinn_proto::Connection, id: StreamId, queue: &mut Outbox) {
    while !queue.frames.is_empty() {
        let (front, _) = queue.frames.as_mut_slices();
        let offered = front.len();
        match inner.send_stream(id).write_chunks(front) {
            Ok(written) => {
                queue.bytes -= written.bytes;
                queue.frames.drain(..written.chunks);
                if written.chunks < offered {
                    return;
                }
            }
            // Blocked: the stream says when it is writable again (the connection gets
            // polled then). Stopped or closed: the connection is ending anyway.
            Err(quinn_proto::WriteError::Blocked) => return,
            Err(_) => {
                *queue = Outbox::default();
                return;
            }
        }
    }
}
