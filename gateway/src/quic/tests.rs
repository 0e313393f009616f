//! The driver against real `quinn-proto` clients, datagrams carried in memory and time
//! moved by hand: handshakes, both streams, closes from either side, timeouts, refusals.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    StreamId, Transmit, VarInt,
};

use super::{ConnKey, Driver, Event, Flushed, Socket, Transmitter};
use crate::Config;

fn server_addr() -> SocketAddr {
    "127.0.0.1:4433".parse().unwrap()
}

fn client_addr() -> SocketAddr {
    "127.0.0.1:50000".parse().unwrap()
}

/// Datagrams on their way to the client, as a socket would take them.
#[derive(Default)]
struct Wire {
    to_client: VecDeque<Vec<u8>>,
    /// A full socket: `send` refuses.
    full: bool,
}

impl Transmitter for Wire {
    fn send(&mut self, transmit: &Transmit, contents: &[u8]) -> bool {
        if self.full {
            return false;
        }
        let segment = transmit.segment_size.unwrap_or(contents.len());
        self.to_client
            .extend(contents.chunks(segment).map(<[u8]>::to_vec));
        true
    }
}

struct Pair {
    now: Instant,
    server: Driver,
    wire: Wire,
    client: Endpoint,
    client_config: ClientConfig,
    clients: HashMap<ConnectionHandle, quinn_proto::Connection>,
    /// What the server reported, in order.
    events: Vec<Event>,
    _dir: tempfile::TempDir,
}

impl Pair {
    fn new() -> Self {
        Self::with_config(&Config::default())
    }

    fn with_config(config: &Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let identity = crate::tls::load_identity(dir.path(), None, None).unwrap();
        let client_config = chat_client::quic_client_config(&identity.cert_path).unwrap();
        let server_config = crate::server::server_config(identity, config).unwrap();
        Self {
            now: Instant::now(),
            server: Driver::new(EndpointConfig::default(), Arc::new(server_config), 1),
            wire: Wire::default(),
            client: Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None),
            client_config,
            clients: HashMap::new(),
            events: Vec::new(),
            _dir: dir,
        }
    }

    fn connect(&mut self) -> ConnectionHandle {
        let (handle, conn) = self
            .client
            .connect(
                self.now,
                self.client_config.clone(),
                server_addr(),
                "localhost",
            )
            .unwrap();
        self.clients.insert(handle, conn);
        handle
    }

    /// Connects a client and opens its control stream: the server's key for it and the
    /// client's stream id.
    fn connect_with_control(&mut self, hello: &[u8]) -> (ConnectionHandle, ConnKey, StreamId) {
        let handle = self.connect();
        self.drive();
        let conn = self.clients.get_mut(&handle).unwrap();
        let control = conn.streams().open(Dir::Bi).unwrap();
        conn.send_stream(control).write(hello).unwrap();
        self.drive();
        let key = self.connected_key().expect("connected");
        (handle, key, control)
    }

    fn connected_key(&self) -> Option<ConnKey> {
        self.events.iter().rev().find_map(|e| match e {
            Event::Connected { conn, .. } => Some(*conn),
            _ => None,
        })
    }

    /// Moves datagrams both ways until none moves.
    fn drive(&mut self) {
        let mut buf = Vec::new();
        for _ in 0..1000 {
            let mut moved = false;
            for conn in self.clients.values_mut() {
                loop {
                    buf.clear();
                    let Some(transmit) = conn.poll_transmit(self.now, 1, &mut buf) else {
                        break;
                    };
                    moved = true;
                    self.server.handle_datagram(
                        self.now,
                        client_addr(),
                        None,
                        None,
                        BytesMut::from(&buf[..transmit.size]),
                        &mut self.wire,
                    );
                }
            }
            self.server.flush(self.now, &mut self.wire, usize::MAX);
            while let Some(event) = self.server.poll_event() {
                self.events.push(event);
            }
            while let Some(datagram) = self.wire.to_client.pop_front() {
                moved = true;
                let mut response = Vec::new();
                let event = self.client.handle(
                    self.now,
                    server_addr(),
                    None,
                    None,
                    BytesMut::from(&datagram[..]),
                    &mut response,
                );
                if let Some(DatagramEvent::ConnectionEvent(handle, event)) = event
                    && let Some(conn) = self.clients.get_mut(&handle)
                {
                    conn.handle_event(event);
                }
            }
            for (&handle, conn) in &mut self.clients {
                while let Some(event) = conn.poll_endpoint_events() {
                    if let Some(event) = self.client.handle_event(handle, event) {
                        conn.handle_event(event);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("datagrams kept moving");
    }

    /// Lets `by` pass in steps, firing every timeout on both sides.
    fn wait(&mut self, by: Duration) {
        let until = self.now + by;
        while self.now < until {
            self.now = (self.now + Duration::from_millis(50)).min(until);
            self.server.handle_timeouts(self.now);
            for conn in self.clients.values_mut() {
                if conn.poll_timeout().is_some_and(|at| at <= self.now) {
                    conn.handle_timeout(self.now);
                }
            }
            self.drive();
        }
    }

    fn client(&mut self, handle: ConnectionHandle) -> &mut quinn_proto::Connection {
        self.clients.get_mut(&handle).unwrap()
    }

    fn control_bytes(&self, key: ConnKey) -> Vec<u8> {
        let mut bytes = Vec::new();
        for event in &self.events {
            if let Event::Control { conn, bytes: b } = event
                && *conn == key
            {
                bytes.extend_from_slice(b);
            }
        }
        bytes
    }

    fn closed(&self, key: ConnKey) -> Option<&ConnectionError> {
        self.events.iter().find_map(|e| match e {
            Event::Closed { conn, reason } if *conn == key => Some(reason),
            _ => None,
        })
    }
}

/// What a client stream has, read to its current end.
fn read_all(conn: &mut quinn_proto::Connection, id: StreamId) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = conn.recv_stream(id);
    if let Ok(mut chunks) = stream.read(true) {
        while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
            out.extend_from_slice(&chunk.bytes);
        }
        let _ = chunks.finalize();
    }
    out
}

fn client_lost(conn: &mut quinn_proto::Connection) -> Option<ConnectionError> {
    while let Some(event) = conn.poll() {
        if let quinn_proto::Event::ConnectionLost { reason } = event {
            return Some(reason);
        }
    }
    None
}

#[test]
fn control_bytes_arrive_in_order_and_answers_go_back() {
    let mut pair = Pair::new();
    let (handle, key, control) = pair.connect_with_control(b"hello ");
    pair.client(handle)
        .send_stream(control)
        .write(b"world")
        .unwrap();
    pair.drive();
    assert_eq!(pair.control_bytes(key), b"hello world");

    assert!(
        pair.server
            .write_control(key, Bytes::from_static(b"welcome"))
    );
    pair.drive();
    assert_eq!(read_all(pair.client(handle), control), b"welcome");
}

#[test]
fn the_push_stream_opens_on_demand_and_carries_frames_in_order() {
    let mut pair = Pair::new();
    let (handle, key, _) = pair.connect_with_control(b"hi");
    assert!(pair.client(handle).streams().accept(Dir::Uni).is_none());

    assert!(pair.server.open_push(key));
    for frame in [&b"one,"[..], b"two,", b"three"] {
        assert!(pair.server.write_push(key, Bytes::copy_from_slice(frame)));
    }
    pair.drive();
    let push = pair
        .client(handle)
        .streams()
        .accept(Dir::Uni)
        .expect("push stream");
    assert_eq!(read_all(pair.client(handle), push), b"one,two,three");
    assert_eq!(pair.server.push_queued(key), 0);
}

#[test]
fn pushes_past_the_clients_window_wait_in_the_queue_until_it_reads() {
    let mut pair = Pair::new();
    // A client that takes 64 KiB of a stream before it reads: 256 KiB cannot all go at once.
    let mut transport = quinn_proto::TransportConfig::default();
    transport
        .stream_receive_window(VarInt::from_u32(64 * 1024))
        .max_concurrent_uni_streams(VarInt::from_u32(1));
    pair.client_config.transport_config(Arc::new(transport));
    let (handle, key, _) = pair.connect_with_control(b"hi");
    pair.server.open_push(key);
    let frame = Bytes::from(vec![7u8; 1024]);
    for _ in 0..256 {
        pair.server.write_push(key, frame.clone());
    }
    pair.drive();
    assert!(
        pair.server.push_queued(key) > 0,
        "flow control holds some back"
    );

    let push = pair.client(handle).streams().accept(Dir::Uni).unwrap();
    let mut received = 0;
    for _ in 0..100 {
        received += read_all(pair.client(handle), push).len();
        pair.drive();
        if received == 256 * 1024 {
            break;
        }
    }
    assert_eq!(received, 256 * 1024);
    assert_eq!(pair.server.push_queued(key), 0);
}

#[test]
fn a_close_reaches_the_client_with_its_code_and_reason_and_kills_the_key() {
    let mut pair = Pair::new();
    let (handle, key, _) = pair.connect_with_control(b"hi");
    let now = pair.now;
    pair.server
        .close(now, key, VarInt::from_u32(0x105), b"token expired");
    pair.drive();

    assert!(matches!(
        pair.closed(key),
        Some(ConnectionError::LocallyClosed)
    ));
    match client_lost(pair.client(handle)) {
        Some(ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code, VarInt::from_u32(0x105));
            assert_eq!(&close.reason[..], b"token expired");
        }
        other => panic!("client saw {other:?}"),
    }
    assert!(!pair.server.write_control(key, Bytes::from_static(b"late")));
    assert!(!pair.server.write_push(key, Bytes::from_static(b"late")));
    // Drained after its closing period: the slot is free.
    pair.wait(Duration::from_secs(5));
    assert_eq!(pair.server.connections(), 0);
}

#[test]
fn a_client_close_and_the_end_of_its_control_stream_are_reported() {
    let mut pair = Pair::new();
    let (handle, key, control) = pair.connect_with_control(b"hi");
    pair.client(handle).send_stream(control).finish().unwrap();
    pair.drive();
    assert!(
        pair.events
            .iter()
            .any(|e| matches!(e, Event::ControlEnded { conn } if *conn == key))
    );

    let now = pair.now;
    pair.client(handle)
        .close(now, VarInt::from_u32(0), Bytes::from_static(b"bye"));
    pair.drive();
    assert!(matches!(
        pair.closed(key),
        Some(ConnectionError::ApplicationClosed(_))
    ));
}

#[test]
fn a_silent_client_times_out() {
    let mut config = Config::default();
    config.transport.idle_timeout_s = 2;
    let mut pair = Pair::with_config(&config);
    let (handle, key, _) = pair.connect_with_control(b"hi");
    // The client disappears: nothing of it reaches the server any more.
    pair.clients.remove(&handle);
    pair.wait(Duration::from_secs(3));
    assert!(matches!(pair.closed(key), Some(ConnectionError::TimedOut)));
    assert_eq!(pair.server.connections(), 0);
    // Its transport counters are handed over as it leaves, not lost with it.
    let sent = pair.events.iter().find_map(|e| match e {
        Event::Drained { conn, stats } if *conn == key => Some(stats.udp_tx.datagrams),
        _ => None,
    });
    assert!(sent.is_some_and(|n| n > 0), "drained with {sent:?}");
    assert_eq!(pair.server.connected_stats().count(), 0);
}

#[test]
fn a_draining_server_refuses_new_connections_and_keeps_the_old_ones() {
    let mut pair = Pair::new();
    let (old, key, control) = pair.connect_with_control(b"hi");
    pair.server.set_accepting(false);
    let refused = pair.connect();
    pair.drive();
    assert!(matches!(
        client_lost(pair.client(refused)),
        Some(ConnectionError::ConnectionClosed(_))
    ));
    assert!(
        pair.server
            .write_control(key, Bytes::from_static(b"still here"))
    );
    pair.drive();
    assert_eq!(read_all(pair.client(old), control), b"still here");
}

#[test]
fn a_key_does_not_reach_the_next_connection_in_its_slot() {
    let mut pair = Pair::new();
    let (first, old_key, _) = pair.connect_with_control(b"one");
    let now = pair.now;
    pair.server.close(now, old_key, VarInt::from_u32(0), b"bye");
    pair.wait(Duration::from_secs(5));
    pair.clients.remove(&first);
    assert_eq!(pair.server.connections(), 0);

    let (second, new_key, control) = pair.connect_with_control(b"two");
    assert_eq!(old_key.slot(), new_key.slot(), "the slot is reused");
    assert_ne!(old_key, new_key);
    assert!(
        !pair
            .server
            .write_control(old_key, Bytes::from_static(b"stale"))
    );
    assert!(
        pair.server
            .write_control(new_key, Bytes::from_static(b"fresh"))
    );
    pair.drive();
    assert_eq!(read_all(pair.client(second), control), b"fresh");
}

#[test]
fn datagrams_a_full_socket_refused_go_out_at_the_next_flush() {
    let mut pair = Pair::new();
    let (handle, key, control) = pair.connect_with_control(b"hi");
    pair.wire.full = true;
    pair.server.write_control(key, Bytes::from_static(b"held"));
    let now = pair.now;
    assert_eq!(
        pair.server.flush(now, &mut pair.wire, usize::MAX),
        Flushed::SocketFull
    );
    pair.wire.full = false;
    pair.drive();
    assert_eq!(read_all(pair.client(handle), control), b"held");
}

#[test]
fn a_flush_polls_at_most_its_budget_and_the_rest_goes_next() {
    let mut pair = Pair::new();
    let clients: Vec<_> = (0..3)
        .map(|i| pair.connect_with_control(format!("client {i}").as_bytes()))
        .collect();
    for (_, key, _) in &clients {
        pair.server
            .write_control(*key, Bytes::from_static(b"answer"));
    }
    let now = pair.now;
    assert_eq!(pair.server.flush(now, &mut pair.wire, 2), Flushed::Budget);
    assert_eq!(pair.server.flush(now, &mut pair.wire, 2), Flushed::All);
    pair.drive();
    for (handle, _, control) in clients {
        assert_eq!(read_all(pair.client(handle), control), b"answer");
    }
}

#[test]
fn a_paused_control_stream_holds_the_client_back_until_resumed() {
    let mut pair = Pair::new();
    let (handle, key, control) = pair.connect_with_control(b"x");
    pair.server.pause_control(key, true);
    let flood = vec![1u8; 1 << 20];
    let mut written = 0;
    for _ in 0..50 {
        match pair
            .client(handle)
            .send_stream(control)
            .write(&flood[written..])
        {
            Ok(n) => written += n,
            Err(_) => break,
        }
        pair.drive();
    }
    // Nothing past the first byte was handed over, and the client is held at the
    // stream's window, far short of the megabyte.
    assert_eq!(pair.control_bytes(key).len(), 1);
    assert!(
        written < 1 << 20,
        "flow control stopped the client at {written}"
    );

    pair.server.pause_control(key, false);
    pair.drive();
    assert_eq!(pair.control_bytes(key).len(), 1 + written);
}

/// tokio learns that a socket got readable again only when the loop yields to it: in the
/// middle of a long turn its readiness still says "empty" while datagrams pile up. The
/// loop's mid-turn reads ask the socket itself (a 10,000-connection flush overflowed the
/// receive buffer before they did).
#[tokio::test]
async fn a_read_in_the_middle_of_a_turn_finds_what_arrived_during_it() {
    let mut pair = Pair::new();
    let mut socket = Socket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    let to = socket.local_addr().unwrap();
    assert_eq!(socket.receive(&mut pair.server, 4), 0);
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..5 {
        peer.send_to(b"not a QUIC packet", to).unwrap();
    }
    // Still the same turn (nothing awaited): tokio has not seen them arrive.
    assert_eq!(socket.receive(&mut pair.server, 4), 0);
    assert_eq!(socket.receive_now(&mut pair.server, 4), 5);
    assert_eq!(socket.receive_now(&mut pair.server, 4), 0);
}

/// Moves datagrams between a client's and a server's driver until none moves; what each
/// reported, client's first.
fn exchange(client: &mut Driver, server: &mut Driver, now: Instant) -> (Vec<Event>, Vec<Event>) {
    let (mut to_server, mut to_client) = (Wire::default(), Wire::default());
    let mut events = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        client.flush(now, &mut to_server, usize::MAX);
        server.flush(now, &mut to_client, usize::MAX);
        events.0.extend(std::iter::from_fn(|| client.poll_event()));
        events.1.extend(std::iter::from_fn(|| server.poll_event()));
        if to_server.to_client.is_empty() && to_client.to_client.is_empty() {
            return events;
        }
        for datagram in to_server.to_client.drain(..) {
            let data = BytesMut::from(&datagram[..]);
            server.handle_datagram(now, client_addr(), None, None, data, &mut to_client);
        }
        for datagram in to_client.to_client.drain(..) {
            let data = BytesMut::from(&datagram[..]);
            client.handle_datagram(now, server_addr(), None, None, data, &mut to_server);
        }
    }
    panic!("datagrams kept moving");
}

/// The bytes of one kind of stream event for `key`, in order.
fn stream_bytes(events: &[Event], key: ConnKey, push: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        match event {
            Event::Push { conn, bytes } if push && *conn == key => out.extend_from_slice(bytes),
            Event::Control { conn, bytes } if !push && *conn == key => out.extend_from_slice(bytes),
            _ => {}
        }
    }
    out
}

#[test]
fn a_client_driver_opens_the_control_stream_and_reads_the_push_stream() {
    let dir = tempfile::tempdir().unwrap();
    let identity = crate::tls::load_identity(dir.path(), None, None).unwrap();
    let client_config = chat_client::quic_client_config(&identity.cert_path).unwrap();
    let server_config = crate::server::server_config(identity, &Config::default()).unwrap();
    let mut server = Driver::new(EndpointConfig::default(), Arc::new(server_config), 1);
    let mut client = Driver::client(EndpointConfig::default(), 1);
    let now = Instant::now();

    // What the client queues before the handshake goes first on its control stream.
    let key = client
        .connect(now, client_config, server_addr(), "localhost")
        .unwrap();
    assert!(client.write_control(key, Bytes::from_static(b"hello")));
    let (client_events, server_events) = exchange(&mut client, &mut server, now);
    assert!(matches!(client_events[0], Event::Connected { conn, .. } if conn == key));
    let Some(Event::Connected {
        conn: at_server, ..
    }) = server_events.first()
    else {
        panic!("server saw {server_events:?}");
    };
    let at_server = *at_server;
    assert_eq!(stream_bytes(&server_events, at_server, false), b"hello");

    server.write_control(at_server, Bytes::from_static(b"welcome"));
    server.open_push(at_server);
    for frame in [&b"one,"[..], b"two"] {
        server.write_push(at_server, Bytes::copy_from_slice(frame));
    }
    let (client_events, _) = exchange(&mut client, &mut server, now);
    assert_eq!(stream_bytes(&client_events, key, false), b"welcome");
    assert_eq!(stream_bytes(&client_events, key, true), b"one,two");

    client.write_control(key, Bytes::from_static(b"ack"));
    let (_, server_events) = exchange(&mut client, &mut server, now);
    assert_eq!(stream_bytes(&server_events, at_server, false), b"ack");
    assert_eq!(client.connected_stats().count(), 1);

    server.close(now, at_server, VarInt::from_u32(7), b"bye");
    let (client_events, _) = exchange(&mut client, &mut server, now);
    let closed = client_events.iter().find_map(|e| match e {
        Event::Closed { conn, reason } if *conn == key => Some(reason),
        _ => None,
    });
    assert!(
        matches!(closed, Some(ConnectionError::ApplicationClosed(c)) if c.error_code == VarInt::from_u32(7)),
        "client saw {client_events:?}"
    );
}
