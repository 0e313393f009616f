//! This gateway's view of who is connected here: the local map group → connections and
//! user → connections, kept in memory only. It subscribes the bus to a topic while some
//! local connection cares and fans each bus event out to those connections.
//!
//! Fan-out is per message, not per recipient: the push is encoded once upstream, and the
//! endpoint loop's pushers get one command per message naming its local recipients, each
//! with an `Arc` of the same bytes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use chat_protocol::{AckRange, Frame, UnreadCount};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::bus::{Bus, BusError, Event, Topic};
use crate::plugins::Plugins;
use crate::quic::ConnKey;
use crate::server::pushers::{PushCommand, PushSender};
pub use crate::session::Push;
use crate::session::{Publisher, Requests};
use crate::store::{Membership, Store, StoreError};
use crate::unread::Unread;

pub type ConnId = u64;

/// Why a connection could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// For a private message: who sees it, and the placeholder everyone else gets.
struct Private {
    sender: String,
    visible_to: HashSet<String>,
    placeholder: Arc<Push>,
}

impl Private {
    fn sees(&self, user: &str) -> bool {
        self.sender == user || self.visible_to.contains(user)
    }
}

/// Changes to a connection's delivery state. Never dropped, unlike pushes.
#[derive(Debug)]
pub enum Control {
    Joined {
        group: String,
        joined_seq: u64,
        /// The app's focus leaves the new group in the background.
        background: bool,
    },
    Left {
        group: String,
    },
    Ack(Vec<AckRange>),
    /// Live events may have been missed: catch every group up from the log.
    Resync,
    /// A frame for the push stream outside the delivery window, to write now (`GoAway`).
    Notice(Bytes),
    /// An `UnreadChanged` frame: it may wait briefly to share a packet with the next push.
    Unread(Bytes),
    /// The group's messages up to `seq` are counted (and in offline buffers): one the
    /// connection has not had is caught up from the log.
    Counted {
        group: Arc<str>,
        seq: u64,
    },
    /// The app moved `group` to the background or back (`Focus`). Coming back, `latest`
    /// is the newest seq fanned out while it was in the background (0: none).
    Focus {
        group: String,
        background: bool,
        latest: u64,
    },
    /// A background group got its first message since the connection last took its
    /// activity: report it in the next `Activity` frame.
    Activity(Arc<GroupFocus>),
}

/// Whether the app shows a group on one connection, as the fan-out sees it (`Focus`).
#[derive(Debug)]
pub struct GroupFocus {
    pub group: Arc<str>,
    /// The newest seq fanned out since the group went to the background (0: none).
    latest: AtomicU64,
    /// Set by the fan-out when `latest` moved since the pusher last reported it; the
    /// message that sets it tells the pusher.
    unreported: AtomicBool,
}

impl GroupFocus {
    fn new(group: &str) -> Arc<Self> {
        Arc::new(Self {
            group: group.into(),
            latest: AtomicU64::new(0),
            unreported: AtomicBool::new(false),
        })
    }

    /// The newest seq fanned out, if it moved since the last call.
    pub fn take_unreported(&self) -> Option<u64> {
        // Acquire pairs with the fan-out's Release: the seq that set the flag is visible.
        self.unreported
            .swap(false, Ordering::Acquire)
            .then(|| self.latest.load(Ordering::Relaxed))
    }
}

/// A connection in a group's fan-out list.
#[derive(Clone)]
struct Subscriber {
    handle: ConnHandle,
    /// The app does not show the group: only `focus` is touched. Kept here, not in
    /// `focus`, so that a foreground push reads no other allocation (changed only under
    /// the write lock, by [`Node::focus`]).
    background: bool,
    focus: Arc<GroupFocus>,
}

/// A local connection: its user, handle, groups and the app's focus.
struct LocalConn {
    user: String,
    handle: ConnHandle,
    groups: HashSet<String>,
    /// The groups the app shows (`Focus`); `None` until it says, when all are foreground.
    foreground: Option<HashSet<String>>,
}

impl LocalConn {
    fn backgrounds(&self, group: &str) -> bool {
        self.foreground.as_ref().is_some_and(|f| !f.contains(group))
    }
}

/// What the node keeps of a local connection.
#[derive(Clone)]
struct ConnHandle {
    user: Arc<str>,
    /// The connection as the pushers know it.
    conn: ConnKey,
    flags: Arc<ConnFlags>,
}

/// State the node and a connection's pusher share without a message.
#[derive(Debug)]
pub struct ConnFlags {
    /// Cleared by the pusher once every group has had a push since the connect: until
    /// then it wants `Control::Counted` (after that, one per flush would only be work).
    pub wants_counted: AtomicBool,
}

/// A connection's side of its registration.
pub struct Attached {
    pub id: ConnId,
    pub flags: Arc<ConnFlags>,
}

#[derive(Default)]
struct LocalMap {
    /// group → its local connections: the fan-out index.
    groups: HashMap<String, HashMap<ConnId, Subscriber>>,
    /// user → their local connections (a user may be connected from several devices).
    users: HashMap<String, HashMap<ConnId, ()>>,
    /// connection → its user, handle and groups, so detaching touches only its own entries.
    conns: HashMap<ConnId, LocalConn>,
}

impl LocalMap {
    /// Adds the connection to `group`'s fan-out; returns whether it is in the background.
    fn join(&mut self, id: ConnId, group: &str, changes: &mut TopicChanges) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        let background = conn.backgrounds(group);
        if conn.groups.insert(group.to_owned()) {
            let subscriber = Subscriber {
                handle: conn.handle.clone(),
                background,
                focus: GroupFocus::new(group),
            };
            insert(
                &mut self.groups,
                group,
                id,
                subscriber,
                Topic::Group(group.to_owned()),
                changes,
            );
        }
        background
    }

    fn leave(&mut self, id: ConnId, group: &str, changes: &mut TopicChanges) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.groups.remove(group) {
            remove(
                &mut self.groups,
                group,
                id,
                Topic::Group(group.to_owned()),
                changes,
            );
        }
    }
}

/// Topic changes computed under the map lock, applied to the bus after it.
#[derive(Default)]
struct TopicChanges {
    subscribe: Vec<Topic>,
    unsubscribe: Vec<Topic>,
}

pub struct Node {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub requests: Requests,
    pub plugins: Arc<Plugins>,
    pub unread: Arc<Unread>,
    /// The endpoint loop's pushers, which write every local connection's push stream.
    pushes: PushSender,
    local: RwLock<LocalMap>,
    /// Serializes subscription changes so that a subscribe and an unsubscribe of the same
    /// topic reach the bus in the order the map changed.
    topics: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    /// Woken whenever a connection detaches (a drain waits for the last one).
    detached: tokio::sync::Notify,
    /// Time to hand one message to every local connection in its group.
    fan_out_seconds: Histogram,
    events: Counter,
    /// The bus lost its subscriptions and resubscribed: every local connection was caught up.
    resyncs: Counter,
}

/// Point-in-time figures of the local map, for `/metrics` and the admin API.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct LocalStats {
    pub connections: usize,
    pub users: usize,
    pub groups: usize,
}

impl Node {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        plugins: Arc<Plugins>,
        publisher: Arc<Publisher>,
        pushes: PushSender,
    ) -> Arc<Self> {
        Arc::new(Self {
            unread: publisher.unread().clone(),
            requests: Requests::new(store.clone(), bus.clone(), publisher, plugins.clone()),
            plugins,
            store,
            bus,
            pushes,
            local: RwLock::new(LocalMap::default()),
            topics: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            detached: tokio::sync::Notify::new(),
            fan_out_seconds: crate::metrics::latency_histogram(),
            events: Counter::default(),
            resyncs: Counter::default(),
        })
    }

    /// Runs the bus event loop until the bus closes.
    pub async fn run_events(self: Arc<Self>) {
        let Some(mut events) = self.bus.take_events() else {
            tracing::error!("bus events already taken");
            return;
        };
        // Work addressed to this gateway: groups whose unread counts it owns.
        let mine = Topic::Gateway(self.unread.gateway_id().to_owned());
        if let Err(error) = self.bus.subscribe(mine).await {
            // Only merging suffers: counts are still exact, flushed where they are looked at.
            tracing::warn!(%error, "subscribing to this gateway's topic failed");
        }
        while let Some(event) = events.recv().await {
            self.dispatch(event).await;
        }
    }

    /// Registers connection `conn` of `user` (expected by the pushers) and returns the
    /// groups it is now in.
    ///
    /// The user's groups are read while membership events are held back, so a change made
    /// meanwhile is either in what we read or applied to this connection afterwards.
    pub async fn attach(
        &self,
        user: &str,
        conn: ConnKey,
    ) -> Result<(Attached, Vec<Membership>), AttachError> {
        let flags = Arc::new(ConnFlags {
            wants_counted: AtomicBool::new(true),
        });
        let handle = ConnHandle {
            user: user.into(),
            conn,
            flags: flags.clone(),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _topics = self.topics.lock().await;
        let groups = self.store.groups_of(user).await?;
        let mut changes = TopicChanges::default();
        {
            let mut local = self.local.write().expect("local map lock");
            insert(
                &mut local.users,
                user,
                id,
                (),
                Topic::User(user.to_owned()),
                &mut changes,
            );
            let conn = LocalConn {
                user: user.to_owned(),
                handle,
                groups: HashSet::new(),
                foreground: None,
            };
            local.conns.insert(id, conn);
            for m in &groups {
                local.join(id, &m.group, &mut changes);
            }
        }
        if let Err(error) = self.apply(changes).await {
            drop(_topics);
            self.detach(id).await;
            return Err(error.into());
        }
        Ok((Attached { id, flags }, groups))
    }

    /// Forgets a connection.
    pub async fn detach(&self, id: ConnId) {
        let _topics = self.topics.lock().await;
        let mut changes = TopicChanges::default();
        {
            let mut local = self.local.write().expect("local map lock");
            let Some(conn) = local.conns.get(&id) else {
                return;
            };
            let (user, groups) = (conn.user.clone(), conn.groups.clone());
            for group in groups {
                local.leave(id, &group, &mut changes);
            }
            remove(
                &mut local.users,
                &user,
                id,
                Topic::User(user.clone()),
                &mut changes,
            );
            local.conns.remove(&id);
        }
        self.detached.notify_waiters();
        if let Err(error) = self.apply(changes).await {
            tracing::warn!(%error, "unsubscribe failed");
        }
    }

    async fn apply(&self, changes: TopicChanges) -> Result<(), BusError> {
        for topic in changes.subscribe {
            self.bus.subscribe(topic).await?;
        }
        for topic in changes.unsubscribe {
            self.bus.unsubscribe(topic).await?;
        }
        Ok(())
    }

    async fn dispatch(&self, event: Event) {
        self.events.inc();
        let received = Instant::now();
        match event {
            Event::Message {
                group,
                seq,
                push,
                private,
            } => {
                let group: Arc<str> = group.into();
                let private = private.map(|p| Private {
                    sender: p.sender,
                    visible_to: p.visible_to.into_iter().collect(),
                    placeholder: Arc::new(Push {
                        group: group.clone(),
                        seq,
                        bytes: p.placeholder,
                        received,
                    }),
                });
                self.fan_out(
                    Arc::new(Push {
                        group,
                        seq,
                        bytes: push,
                        received,
                    }),
                    private.as_ref(),
                )
            }
            Event::Joined {
                group,
                user,
                joined_seq,
            } => {
                self.membership_changed(&user, &group, Some(joined_seq))
                    .await
            }
            Event::Left { group, user } => self.membership_changed(&user, &group, None).await,
            Event::Unread {
                group,
                counted,
                counts,
            } => {
                self.notify_counted(&group, counted);
                self.notify_unread(&group, &counts);
            }
            Event::Uncounted { groups } => self.unread.uncounted(groups),
            Event::Resync => {
                self.resyncs.inc();
                self.notify_every_connection(|| Control::Resync);
            }
        }
    }

    /// `user` joined `group` (with its watermark) or left it: update their local connections.
    async fn membership_changed(&self, user: &str, group: &str, joined_seq: Option<u64>) {
        let _topics = self.topics.lock().await;
        let mut changes = TopicChanges::default();
        {
            let mut local = self.local.write().expect("local map lock");
            let ids: Vec<ConnId> = match local.users.get(user) {
                Some(conns) => conns.keys().copied().collect(),
                None => return,
            };
            for id in ids {
                let control = match joined_seq {
                    Some(joined_seq) => Control::Joined {
                        group: group.to_owned(),
                        joined_seq,
                        background: local.join(id, group, &mut changes),
                    },
                    None => {
                        local.leave(id, group, &mut changes);
                        Control::Left {
                            group: group.to_owned(),
                        }
                    }
                };
                if let Some(conn) = local.conns.get(&id) {
                    self.pushes.control(conn.handle.conn, control);
                }
            }
        }
        if let Err(error) = self.apply(changes).await {
            tracing::warn!(%group, %error, "changing subscriptions failed");
        }
    }

    /// Hands one shared push to the pushers with every local connection in its group, in
    /// one command: a slow connection never holds up the others (its delivery window
    /// fills, and it reads the log instead).
    ///
    /// A private message's recipients get the push, everyone else its placeholder: both
    /// were encoded once, before the loop. A connection with the group in the background
    /// gets no push: its group's latest seq is raised, and only the first message since its
    /// last `Activity` tells its pusher.
    fn fan_out(&self, push: Arc<Push>, private: Option<&Private>) {
        let local = self.local.read().expect("local map lock");
        let Some(conns) = local.groups.get(&*push.group) else {
            return;
        };
        let mut recipients = Vec::with_capacity(conns.len());
        for Subscriber {
            handle,
            background,
            focus,
        } in conns.values()
        {
            if *background {
                focus.latest.fetch_max(push.seq, Ordering::Relaxed);
                if !focus.unreported.swap(true, Ordering::Release) {
                    self.pushes
                        .control(handle.conn, Control::Activity(focus.clone()));
                }
                continue;
            }
            let this = match private {
                Some(p) if !p.sees(&handle.user) => &p.placeholder,
                _ => &push,
            };
            recipients.push((handle.conn, this.clone()));
        }
        if !recipients.is_empty() {
            self.pushes.send(PushCommand::Fanout(recipients));
        }
        self.fan_out_seconds
            .observe(push.received.elapsed().as_secs_f64());
    }

    /// Tells the local connections in `group` how far it is counted: a device that
    /// connected between a send and its flush found no reference to it in its offline
    /// buffer, and learns of it here (one control message per flush to each connection that
    /// still has a group without a push since it connected).
    fn notify_counted(&self, group: &str, seq: u64) {
        let local = self.local.read().expect("local map lock");
        let Some(conns) = local.groups.get(group) else {
            return;
        };
        let group: Arc<str> = group.into();
        for Subscriber { handle, .. } in conns.values() {
            if !handle.flags.wants_counted.load(Ordering::Relaxed) {
                continue;
            }
            self.pushes.control(
                handle.conn,
                Control::Counted {
                    group: group.clone(),
                    seq,
                },
            );
        }
    }

    /// Tells each local connection of these users their new count in `group`: one frame
    /// per user per flush, whatever the number of messages counted.
    fn notify_unread(&self, group: &str, counts: &[(String, u64)]) {
        let local = self.local.read().expect("local map lock");
        for (user, count) in counts {
            let Some(conns) = local.users.get(user) else {
                continue;
            };
            let frame = Frame::UnreadChanged {
                groups: vec![UnreadCount {
                    group: group.to_owned(),
                    count: *count,
                }],
            }
            .encode();
            for id in conns.keys() {
                if let Some(conn) = local.conns.get(id) {
                    self.pushes
                        .control(conn.handle.conn, Control::Unread(frame.clone()));
                }
            }
        }
    }

    /// Sets the groups connection `id`'s app shows (`Focus`); its other groups, now and
    /// joined later, are in the background. Tells the pusher of each group that moved.
    pub fn focus(&self, id: ConnId, foreground: HashSet<String>) {
        let mut local = self.local.write().expect("local map lock");
        let LocalMap { groups, conns, .. } = &mut *local;
        let Some(conn) = conns.get_mut(&id) else {
            return;
        };
        for group in &conn.groups {
            let Some(subscriber) = groups.get_mut(group).and_then(|c| c.get_mut(&id)) else {
                continue;
            };
            let background = !foreground.contains(group);
            if subscriber.background == background {
                continue;
            }
            // No fan-out runs under the write lock: nothing is raised in between. Each
            // stay in the background starts from nothing.
            let focus = &subscriber.focus;
            let latest = focus.latest.swap(0, Ordering::Relaxed);
            focus.unreported.store(false, Ordering::Relaxed);
            subscriber.background = background;
            self.pushes.control(
                conn.handle.conn,
                Control::Focus {
                    group: group.clone(),
                    background,
                    latest,
                },
            );
        }
        conn.foreground = Some(foreground);
    }

    /// Sends a control message to every local connection; returns how many there are.
    pub fn notify_every_connection(&self, control: impl Fn() -> Control) -> usize {
        let local = self.local.read().expect("local map lock");
        for conn in local.conns.values() {
            self.pushes.control(conn.handle.conn, control());
        }
        local.conns.len()
    }

    /// Local connections and groups with local members, for logs and tests.
    pub fn local_counts(&self) -> (usize, usize) {
        let local = self.local.read().expect("local map lock");
        (local.conns.len(), local.groups.len())
    }

    /// Waits until no connection is left here or `until` passes; returns how many are left.
    pub async fn connections_gone(&self, until: tokio::time::Instant) -> usize {
        loop {
            // Registered before the count is read, so a detach in between still wakes us.
            let detached = self.detached.notified();
            let left = self.local_counts().0;
            if left == 0 || tokio::time::Instant::now() >= until {
                return left;
            }
            tokio::select! {
                _ = detached => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// The local map's sizes now.
    pub fn local_stats(&self) -> LocalStats {
        let local = self.local.read().expect("local map lock");
        LocalStats {
            connections: local.conns.len(),
            users: local.users.len(),
            groups: local.groups.len(),
        }
    }

    /// A group's members connected here, each with their number of connections.
    pub fn local_members(&self, group: &str) -> Vec<(String, usize)> {
        let local = self.local.read().expect("local map lock");
        let mut members: HashMap<&str, usize> = HashMap::new();
        for Subscriber { handle, .. } in
            local.groups.get(group).into_iter().flat_map(|c| c.values())
        {
            *members.entry(&handle.user).or_default() += 1;
        }
        let mut members: Vec<(String, usize)> = members
            .into_iter()
            .map(|(user, n)| (user.to_owned(), n))
            .collect();
        members.sort();
        members
    }

    pub(crate) fn register_metrics(&self, registry: &mut Registry) {
        self.requests.register_metrics(registry);
        registry.register(
            "bus_events",
            "Events received from the bus (messages, membership, unread flushes)",
            self.events.clone(),
        );
        registry.register(
            "bus_resyncs",
            "Times the bus lost pub/sub (Redis restarted, connection dropped), resubscribed and caught every local connection up from the log",
            self.resyncs.clone(),
        );
        crate::metrics::register_seconds(
            registry,
            "fan_out",
            "From a message's arrival from the bus to its push handed to the pushers for every local member",
            self.fan_out_seconds.clone(),
        );
    }
}

/// Adds a connection under `key`; the first one there subscribes `topic`.
fn insert<V>(
    map: &mut HashMap<String, HashMap<ConnId, V>>,
    key: &str,
    id: ConnId,
    value: V,
    topic: Topic,
    changes: &mut TopicChanges,
) {
    let conns = map.entry(key.to_owned()).or_default();
    if conns.is_empty() {
        changes.subscribe.push(topic);
    }
    conns.insert(id, value);
}

/// Removes a connection from `key`; the last one there unsubscribes `topic`.
fn remove<V>(
    map: &mut HashMap<String, HashMap<ConnId, V>>,
    key: &str,
    id: ConnId,
    topic: Topic,
    changes: &mut TopicChanges,
) {
    if let Some(conns) = map.get_mut(key) {
        conns.remove(&id);
        if conns.is_empty() {
            map.remove(key);
            changes.unsubscribe.push(topic);
        }
    }
}
