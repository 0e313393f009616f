//! One client socket's members on one loop: the gateway's own QUIC core
//! ([`Driver::client`]) carries every member's connection, and each [`Member`] reads its
//! bytes. quinn's task per connection (with its channels and timers) cost the load
//! generator as much CPU as the gateway's whole fan-out, and on two cores that starved
//! both (docs/BENCHMARKS.md, nineteenth set).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_gateway::quic::{ConnKey, Driver, Event, Flushed, Socket};
use tokio::sync::{mpsc, oneshot};

use super::member::{Member, Seen};
use super::{Clock, Received, Transport};

/// Reads of the socket per loop turn (as the gateway's loop).
const RECEIVE_BATCHES: usize = 16;
/// Connections polled between two reads of the socket.
const FLUSH_BUDGET: usize = 256;
/// Handshakes in flight per socket while joining.
const JOINING: usize = 64;

pub enum Command {
    /// Count pushes from now on: `expected` unique ones per member, until `deadline`.
    Go {
        expected: u64,
        clock: Arc<Clock>,
        deadline: Instant,
        reply: oneshot::Sender<Received>,
    },
    /// Close every connection and stop.
    Close,
}

/// The members to join: the gateway each connects to and its token.
pub struct Joining {
    pub gateway: SocketAddr,
    pub token: String,
}

/// Starts the loop on the current runtime. The receiver answers once every member has
/// joined (or the first failed to).
pub fn start(
    socket: std::net::UdpSocket,
    config: quinn::ClientConfig,
    joining: Vec<Joining>,
    background: bool,
) -> anyhow::Result<(
    mpsc::UnboundedSender<Command>,
    oneshot::Receiver<anyhow::Result<()>>,
)> {
    let socket = Socket::new(socket)?;
    let driver = Driver::client(quinn::EndpointConfig::default(), socket.max_datagrams());
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (joined_tx, joined) = oneshot::channel();
    let mut members = Vec::with_capacity(joining.len());
    let mut hellos = VecDeque::with_capacity(joining.len());
    for (index, j) in joining.into_iter().enumerate() {
        let (member, hello) = Member::new(j.token, background);
        members.push(member);
        hellos.push_back((index, j.gateway, hello));
    }
    let run = Loop {
        driver,
        socket,
        config,
        keys: HashMap::new(),
        conns: vec![None; members.len()],
        errors: vec![None; members.len()],
        members,
        hellos,
        joining: 0,
        joined: 0,
        joined_tx: Some(joined_tx),
        acks: BinaryHeap::new(),
        run: None,
    };
    tokio::spawn(run.run(command_rx));
    Ok((commands, joined))
}

struct Loop {
    driver: Driver,
    socket: Socket,
    config: quinn::ClientConfig,
    members: Vec<Member>,
    /// Each member's connection, both ways.
    keys: HashMap<ConnKey, usize>,
    conns: Vec<Option<ConnKey>>,
    errors: Vec<Option<String>>,
    /// Members not connecting yet, with where to and what to say first.
    hellos: VecDeque<(usize, SocketAddr, Vec<Bytes>)>,
    /// Handshakes (and Hellos) in flight, and members done joining.
    joining: usize,
    joined: usize,
    joined_tx: Option<oneshot::Sender<anyhow::Result<()>>>,
    /// Members' ACK deadlines, earliest first; an entry that no longer matches its
    /// member's deadline is stale.
    acks: BinaryHeap<Reverse<(Instant, usize)>>,
    run: Option<Run>,
}

struct Run {
    expected: u64,
    clock: Arc<Clock>,
    deadline: Instant,
    reply: oneshot::Sender<Received>,
    before: Transport,
    /// Members with all their pushes, or an error.
    finished: usize,
}

impl Loop {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            self.socket.receive(&mut self.driver, RECEIVE_BATCHES);
            let now = Instant::now();
            self.driver.handle_timeouts(now);
            self.start_joins(now);
            self.send_due_acks(now);
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
            self.finish_run_if_over();
            let wake = [
                self.driver.next_timeout(),
                self.acks.peek().map(|Reverse((due, _))| *due),
                self.run.as_ref().map(|run| run.deadline),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = self.socket.writable(), if flushed == Flushed::SocketFull => {}
                _ = self.socket.readable() => {}
                command = commands.recv() => match command {
                    Some(Command::Go { expected, clock, deadline, reply }) => {
                        let before = Transport::of(self.driver.connected_stats());
                        self.run = Some(Run { expected, clock, deadline, reply, before, finished: 0 });
                    }
                    Some(Command::Close) | None => return self.close(),
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn start_joins(&mut self, now: Instant) {
        while self.joining < JOINING {
            let Some((index, gateway, hello)) = self.hellos.pop_front() else {
                return;
            };
            match self
                .driver
                .connect(now, self.config.clone(), gateway, "localhost")
            {
                Ok(key) => {
                    for frame in hello {
                        self.driver.write_control(key, frame);
                    }
                    self.keys.insert(key, index);
                    self.conns[index] = Some(key);
                    self.joining += 1;
                }
                Err(e) => self.fail(index, format!("connecting: {e}")),
            }
        }
    }

    fn send_due_acks(&mut self, now: Instant) {
        while let Some(&Reverse((due, index))) = self.acks.peek() {
            if due > now {
                return;
            }
            self.acks.pop();
            let member = &mut self.members[index];
            if member.ack_due() == Some(due)
                && let Some(ack) = member.take_ack()
            {
                self.write_control(index, ack);
            }
        }
    }

    fn write_control(&mut self, index: usize, bytes: Bytes) {
        if let Some(key) = self.conns[index] {
            self.driver.write_control(key, bytes);
        }
    }

    fn events(&mut self) {
        while let Some(event) = self.driver.poll_event() {
            match event {
                Event::Control { conn, bytes } => {
                    let Some(&index) = self.keys.get(&conn) else {
                        continue;
                    };
                    let was_joined = self.members[index].joined();
                    match self.members[index].on_control(&bytes, Instant::now()) {
                        Ok(()) if !was_joined && self.members[index].joined() => self.on_joined(),
                        Ok(()) => {}
                        Err(e) => self.fail(index, e.to_string()),
                    }
                }
                Event::Push { conn, bytes } => {
                    let Some(&index) = self.keys.get(&conn) else {
                        continue;
                    };
                    self.on_push(conn, index, &bytes);
                }
                Event::PushEnded { conn } => {
                    if let Some(&index) = self.keys.get(&conn) {
                        self.fail(index, "push stream ended".into());
                    }
                }
                Event::ControlEnded { conn } => {
                    if let Some(&index) = self.keys.get(&conn) {
                        self.fail(index, "control stream ended".into());
                    }
                }
                Event::Closed { conn, reason } => {
                    if let Some(index) = self.keys.remove(&conn) {
                        self.fail(index, reason.to_string());
                    }
                }
                Event::HandshakeFailed { reason } => {
                    self.report_joined(Err(anyhow::anyhow!("handshake failed: {reason}")));
                }
                Event::Connected { .. } | Event::Drained { .. } | Event::Refused { .. } => {}
            }
        }
    }

    fn on_joined(&mut self) {
        self.joining -= 1;
        self.joined += 1;
        if self.joined == self.members.len() {
            self.report_joined(Ok(()));
        }
    }

    fn on_push(&mut self, conn: ConnKey, index: usize, bytes: &[u8]) {
        let now = Instant::now();
        let now_ns = self.run.as_ref().map_or(0, |run| run.clock.at_ns(now));
        let member = &mut self.members[index];
        let before = (member.seen.unique, member.ack_due());
        match member.on_push(bytes, now, now_ns) {
            Ok(Some(ack)) => {
                self.driver.write_control(conn, ack);
            }
            Ok(None) => {
                if before.1.is_none()
                    && let Some(due) = member.ack_due()
                {
                    self.acks.push(Reverse((due, index)));
                }
            }
            Err(e) => return self.fail(index, e.to_string()),
        }
        let Some(run) = self.run.as_mut() else { return };
        let member = &mut self.members[index];
        if before.0 < run.expected && member.seen.unique >= run.expected {
            run.finished += 1;
            // What it holds goes now: the gateway is owed it.
            if let Some(ack) = member.take_ack() {
                self.driver.write_control(conn, ack);
            }
        }
    }

    /// A member failed: before the run, the whole load fails to join; during it, the
    /// member is finished, with its error.
    fn fail(&mut self, index: usize, error: String) {
        if self.errors[index].is_some() {
            return;
        }
        if !self.members[index].joined() {
            self.report_joined(Err(anyhow::anyhow!("member {index}: {error}")));
        }
        if let Some(run) = self.run.as_mut()
            && self.members[index].seen.unique < run.expected
        {
            run.finished += 1;
        }
        self.errors[index] = Some(error);
    }

    fn report_joined(&mut self, result: anyhow::Result<()>) {
        if let Some(tx) = self.joined_tx.take() {
            let _ = tx.send(result);
        }
    }

    /// Reports the run once every member finished or its deadline passed.
    fn finish_run_if_over(&mut self) {
        let over = self.run.as_ref().is_some_and(|run| {
            run.finished >= self.members.len() || Instant::now() >= run.deadline
        });
        if !over {
            return;
        }
        let Some(run) = self.run.take() else { return };
        let mut received = Received {
            seen: Seen::default(),
            errors: 0,
            first_error: None,
            transport: Transport::of(self.driver.connected_stats()).minus(&run.before),
        };
        for (member, error) in self.members.iter_mut().zip(&mut self.errors) {
            if error.is_none() && member.seen.unique < run.expected {
                *error = Some("deadline".into());
            }
            received.add(std::mem::take(&mut member.seen), error.take());
        }
        let _ = run.reply.send(received);
    }

    fn close(mut self) {
        let now = Instant::now();
        for &key in self.keys.keys() {
            self.driver.close(now, key, 0u32.into(), b"done");
        }
        self.driver.flush(now, &mut self.socket, usize::MAX);
    }
}
