//! Every connection's [`Pusher`], run inside the endpoint loop (its [`Application`]).
//!
//! The node hands each message to the loop once, with its local recipients; each
//! recipient's push goes from its `Delivery` straight onto its stream, with no task, queue
//! or lock per connection in between (docs/BENCHMARKS.md, fourteenth set). ACKs and the
//! node's control messages come through the same inbox, in the order they were sent. What
//! needs the store (catch-up pages, the offline sync point) runs in spawned tasks, which
//! answer through the inbox too.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::cursors::Cursors;
use super::pusher::{CatchUpPage, Pusher};
use super::stats::ServerMetrics;
use crate::node::{Control, Push};
use crate::plugins::Plugins;
use crate::quic::{Application, ConnKey, Streams};
use crate::session::RequestError;
use crate::store::Store;

/// Work per loop turn, in commands and fan-out recipients. A turn's pushes to one
/// recipient go onto its stream together and share packets, so a backlog of fan-outs is
/// best taken in one turn: 64 queued fan-outs to 10,000 members are 640,000 offers, about
/// a tenth of a second (a budget of 1,024 sent one push per packet and made saturate-10k
/// ten times slower: docs/BENCHMARKS.md, nineteenth set). Bounded all the same, so that
/// the loop reads its socket between two turns of a larger backlog.
const TURN: usize = 1 << 20;

pub(crate) enum PushCommand {
    /// A connection is registering with the node: hold what arrives for it until it starts.
    Expect(ConnKey),
    /// The connection was welcomed: its delivery state, to run from now on (its push stream
    /// opens with it).
    Start(ConnKey, Box<Pusher>),
    /// One message for its local recipients, each beside the push it gets (a private
    /// message's placeholder, for those who may not see it).
    Fanout(Vec<(ConnKey, Arc<Push>)>),
    Control(ConnKey, Control),
    /// A catch-up page a pusher asked for.
    CaughtUp {
        conn: ConnKey,
        group: String,
        page: Result<CatchUpPage, RequestError>,
    },
    /// The connection ended: forget it once what came before is applied, then say so.
    Finish(ConnKey, Option<oneshot::Sender<()>>),
}

/// Where the node, connections and catch-up tasks send the pushers work.
#[derive(Clone)]
pub(crate) struct PushSender(mpsc::UnboundedSender<PushCommand>);

impl PushSender {
    pub fn send(&self, command: PushCommand) {
        // Only fails once the endpoint loop is gone, when nothing is delivered anyway.
        let _ = self.0.send(command);
    }

    pub fn control(&self, conn: ConnKey, control: Control) {
        self.send(PushCommand::Control(conn, control));
    }
}

/// The pushers' inbox and its sender.
pub(crate) fn channel() -> (PushSender, mpsc::UnboundedReceiver<PushCommand>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (PushSender(tx), rx)
}

/// What every pusher reads, and where their tasks answer.
pub(crate) struct Env {
    pub store: Arc<dyn Store>,
    pub plugins: Arc<Plugins>,
    pub metrics: Arc<ServerMetrics>,
    pub cursors: Arc<Cursors>,
    pub inbox: PushSender,
    /// Live pushes held for a connection that has not started (`delivery.queue`).
    pub held: usize,
}

/// A connection as the pushers know it.
enum Slot {
    /// Registered with the node, not welcomed yet: what arrived for it, in order.
    Starting {
        held: Vec<Held>,
        pushes: usize,
        /// Pushes were dropped past `Env::held`: catch everything up from the log.
        lagged: bool,
    },
    Running(Box<Pusher>),
}

enum Held {
    Push(Arc<Push>),
    Control(Control),
}

/// Registers a connection with the pushers for as long as it lives: dropping it forgets
/// the connection, even when its task is aborted.
pub(crate) struct Registration {
    pub conn: ConnKey,
    pushes: PushSender,
}

impl Registration {
    pub fn new(pushes: &PushSender, conn: ConnKey) -> Self {
        pushes.send(PushCommand::Expect(conn));
        Self {
            conn,
            pushes: pushes.clone(),
        }
    }

    /// Waits until the pushers applied everything sent for this connection before (its
    /// last ACKs), then forgets it.
    pub async fn finish(&self) {
        let (done, finished) = oneshot::channel();
        self.pushes.send(PushCommand::Finish(self.conn, Some(done)));
        let _ = finished.await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A no-op after `finish`: the pushers no longer know the connection.
        self.pushes.send(PushCommand::Finish(self.conn, None));
    }
}

pub(crate) struct Pushers {
    inbox: mpsc::UnboundedReceiver<PushCommand>,
    /// Taken from the inbox, applied by `run` a turn's worth at a time.
    ready: VecDeque<PushCommand>,
    /// Received by `poll_ready`, on their way to `ready`.
    arrived: Vec<PushCommand>,
    /// Looked up once per recipient of every message: foldhash, not SipHash (the keys are
    /// the endpoint's own).
    conns: HashMap<ConnKey, Slot, foldhash::fast::RandomState>,
    /// Each running pusher's next deadline (`Pusher::timer_at`), earliest first.
    timers: BTreeSet<(Instant, ConnKey)>,
    /// Running pushers offered pushes this turn, settled at its end.
    offered: Vec<ConnKey>,
    env: Env,
}

impl Pushers {
    pub fn new(inbox: mpsc::UnboundedReceiver<PushCommand>, env: Env) -> Self {
        Self {
            inbox,
            ready: VecDeque::new(),
            arrived: Vec::new(),
            conns: HashMap::default(),
            timers: BTreeSet::new(),
            offered: Vec::new(),
            env,
        }
    }

    fn apply(&mut self, command: PushCommand, now: Instant, streams: &mut Streams<'_>) {
        match command {
            PushCommand::Expect(conn) => {
                self.conns.insert(
                    conn,
                    Slot::Starting {
                        held: Vec::new(),
                        pushes: 0,
                        lagged: false,
                    },
                );
            }
            PushCommand::Start(conn, mut pusher) => {
                streams.open_push(conn);
                if let Some(Slot::Starting { held, lagged, .. }) = self.conns.remove(&conn) {
                    if lagged {
                        pusher.resync();
                    }
                    for held in held {
                        match held {
                            Held::Push(push) => {
                                if pusher.offer_live(&push, now) {
                                    self.env.metrics.pushes.inc();
                                }
                            }
                            Held::Control(control) => pusher.on_control(control, &self.env, now),
                        }
                    }
                }
                pusher.start(&self.env);
                self.conns.insert(conn, Slot::Running(pusher));
                self.settle(conn, now, streams);
            }
            PushCommand::Fanout(recipients) => self.fan_out(recipients, now),
            PushCommand::Control(conn, control) => match self.conns.get_mut(&conn) {
                Some(Slot::Running(pusher)) => {
                    pusher.on_control(control, &self.env, now);
                    self.settle(conn, now, streams);
                }
                Some(Slot::Starting { held, .. }) => held.push(Held::Control(control)),
                None => {}
            },
            PushCommand::CaughtUp { conn, group, page } => {
                if let Some(Slot::Running(pusher)) = self.conns.get_mut(&conn) {
                    pusher.on_caught_up(&group, page, &self.env, now);
                    self.settle(conn, now, streams);
                }
            }
            PushCommand::Finish(conn, done) => {
                if let Some(Slot::Running(pusher)) = self.conns.remove(&conn)
                    && let Some(at) = pusher.timer_at
                {
                    self.timers.remove(&(at, conn));
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Offers one message to each recipient and writes it where it goes out.
    fn fan_out(&mut self, recipients: Vec<(ConnKey, Arc<Push>)>, now: Instant) {
        let Some(received) = recipients.first().map(|(_, push)| push.received) else {
            return;
        };
        let mut pushed = 0;
        for (conn, push) in recipients {
            match self.conns.get_mut(&conn) {
                Some(Slot::Running(pusher)) => {
                    pushed += u64::from(pusher.offer_live(&push, now));
                    if !pusher.offered {
                        pusher.offered = true;
                        self.offered.push(conn);
                    }
                }
                Some(Slot::Starting {
                    held,
                    pushes,
                    lagged,
                }) => {
                    if *pushes < self.env.held {
                        *pushes += 1;
                        held.push(Held::Push(push));
                    } else {
                        *lagged = true;
                        self.env.metrics.dropped.inc();
                    }
                }
                None => {}
            }
        }
        self.env.metrics.pushes.inc_by(pushed);
        self.env
            .metrics
            .push_delay
            .observe(received.elapsed().as_secs_f64());
    }

    /// Writes what `conn`'s pusher has ready and keeps its deadline in the timer set.
    fn settle(&mut self, conn: ConnKey, now: Instant, streams: &mut Streams<'_>) {
        if let Some(Slot::Running(pusher)) = self.conns.get_mut(&conn) {
            pusher.offered = false;
            let next = pusher.settle(&self.env, now, streams);
            arm(&mut self.timers, conn, pusher, next);
        }
    }

    fn fire_timers(&mut self, now: Instant, streams: &mut Streams<'_>) {
        while let Some(&(at, conn)) = self.timers.first() {
            if at > now {
                return;
            }
            self.timers.pop_first();
            if let Some(Slot::Running(pusher)) = self.conns.get_mut(&conn) {
                pusher.timer_at = None;
                pusher.on_timer(now, &self.env);
                self.settle(conn, now, streams);
            }
        }
    }
}

/// Keeps `pusher`'s entry in the timer set at its next deadline. Moved only when the
/// deadline comes sooner: it fires about once per retransmit timeout while ACKs keep up
/// (each firing drops the acknowledged entries), not once per push.
fn arm(
    timers: &mut BTreeSet<(Instant, ConnKey)>,
    conn: ConnKey,
    pusher: &mut Pusher,
    next: Option<Instant>,
) {
    let Some(at) = next.filter(|at| pusher.timer_at.is_none_or(|t| *at < t)) else {
        return;
    };
    if let Some(old) = pusher.timer_at.replace(at) {
        timers.remove(&(old, conn));
    }
    timers.insert((at, conn));
}

impl Application for Pushers {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.ready.is_empty() {
            return Poll::Ready(());
        }
        match self.inbox.poll_recv_many(cx, &mut self.arrived, TURN) {
            // Closed cannot happen while `env.inbox` lives; wait for the loop to end.
            Poll::Ready(0) | Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.ready.extend(self.arrived.drain(..));
                Poll::Ready(())
            }
        }
    }

    fn run(&mut self, now: Instant, streams: &mut Streams<'_>) {
        while self.ready.len() < TURN {
            match self.inbox.try_recv() {
                Ok(command) => self.ready.push_back(command),
                Err(_) => break,
            }
        }
        let mut budget = TURN;
        while budget > 0 {
            let Some(mut command) = self.ready.pop_front() else {
                break;
            };
            if let PushCommand::Fanout(recipients) = &mut command
                && recipients.len() > budget
            {
                // The rest waits for the next turn, ahead of everything after it.
                let rest = recipients.split_off(budget);
                self.ready.push_front(PushCommand::Fanout(rest));
            }
            budget -= match &command {
                PushCommand::Fanout(recipients) => recipients.len(),
                _ => 1,
            };
            self.apply(command, now, streams);
        }
        // Each recipient's pushes of the whole turn go onto its stream together, so that
        // a backlog of fan-outs shares packets.
        for conn in std::mem::take(&mut self.offered) {
            self.settle(conn, now, streams);
        }
        self.fire_timers(now, streams);
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }
}
