//! Unread counts with merged writes. Sending a message costs no counter write: the
//! message is *staged* for its group, on the gateway that owns the group's counts
//! ([`owners`]: rendezvous hashing over the live gateways; the others just tell the owner,
//! once a tick, which groups got messages). A timer flushes each group's stage every
//! `flush_ms`, and a group whose stage reaches `flush_at` messages is flushed at once;
//! a flush collapses the stage into one `+k` per member ([`tally`]) and writes them in
//! one atomic store step.
//!
//! Exact, not best effort: the store keeps per group a *counted seq* and moves it in the
//! same step as the counts, only if nobody moved it first ([`Store::count_unread`]). A
//! flush covers `counted + 1 ..= head` whatever the stage holds — missing entries (a
//! crash lost the stage, another gateway sent them) are read from the log — so a message
//! is counted once, whichever gateway flushes, however often it is tried.

pub mod owners;
pub mod tally;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chat_protocol::UnreadCount;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

use crate::bus::{Bus, Event, Topic};
use crate::plugins::Plugins;
use crate::session::{RequestError, now_ms};
use crate::store::{Membership, PageFrom, SeqRange, Store, StoredMessage};
use owners::Owners;
pub use tally::Counted;

/// Members read per page while flushing.
const MEMBERS_PAGE: usize = 1000;
/// Messages read per page from the log (recounts, stages a crash lost).
const LOG_PAGE: usize = 500;
/// Attempts when another writer keeps moving the counted seq.
const ATTEMPTS: usize = 8;

/// When staged counts are written.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    /// Flush every group's stage this often.
    pub every: Duration,
    /// Flush a group's stage at once when it holds this many messages.
    pub at: usize,
    /// Groups kept in each user's offline buffer (written by the same flush).
    pub offline_capacity: usize,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(1),
            at: 100,
            offline_capacity: 1000,
        }
    }
}

/// A user's unread counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadSummary {
    pub total: u64,
    pub groups: Vec<UnreadCount>,
}

/// Staged messages of one group, with when each was staged.
struct Stage {
    messages: Vec<(Counted, Instant)>,
    due: Instant,
}

/// The staged groups, and when each is due.
#[derive(Default)]
struct Stages {
    by_group: HashMap<String, Stage>,
    /// (due, group), earliest first.
    due: BTreeSet<(Instant, String)>,
}

impl Stages {
    /// `group`'s stage, started (due after `wait`) if it had none.
    fn open(&mut self, group: &str, wait: Duration) -> &mut Stage {
        if !self.by_group.contains_key(group) {
            let due = Instant::now() + wait;
            self.due.insert((due, group.to_owned()));
            self.by_group.insert(
                group.to_owned(),
                Stage {
                    messages: Vec::new(),
                    due,
                },
            );
        }
        self.by_group.get_mut(group).expect("just opened")
    }

    fn take(&mut self, group: &str) -> Vec<(Counted, Instant)> {
        let Some(stage) = self.by_group.remove(group) else {
            return Vec::new();
        };
        self.due.remove(&(stage.due, group.to_owned()));
        stage.messages
    }

    /// The groups due by `now`, earliest first.
    fn due_by(&self, now: Instant) -> Vec<String> {
        self.due
            .iter()
            .take_while(|(due, _)| *due <= now)
            .map(|(_, group)| group.clone())
            .collect()
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|(due, _)| *due)
    }
}

/// What flushing has done so far, for benchmarks and metrics.
#[derive(Debug, Clone, Default)]
pub struct FlushStats {
    pub flushes: u64,
    /// Messages counted.
    pub messages: u64,
    /// Count increments written: one per member per flush, not one per member per message.
    pub increments: u64,
    /// How long the most recent staged messages waited until counted (up to
    /// `STALENESS_SAMPLES` of them, oldest first).
    pub staleness: Vec<Duration>,
}

/// What flushing exports to `/metrics`.
struct UnreadMetrics {
    flushes: Counter,
    messages: Counter,
    /// Counter writes (`+k` for one member)...
    writes: Counter,
    /// ...and the `+1`s they carry: writing one per member per message would take this many.
    increments: Counter,
    staleness: Histogram,
}

impl Default for UnreadMetrics {
    fn default() -> Self {
        Self {
            flushes: Counter::default(),
            messages: Counter::default(),
            writes: Counter::default(),
            increments: Counter::default(),
            staleness: crate::metrics::latency_histogram(),
        }
    }
}

/// Staleness samples kept.
const STALENESS_SAMPLES: usize = 100_000;

pub struct Unread {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    policy: FlushPolicy,
    stages: Mutex<Stages>,
    stats: Mutex<FlushStats>,
    metrics: UnreadMetrics,
    /// Set once the gateway left the registry: it renews no more.
    retired: AtomicBool,
    /// Groups to flush now (a full stage, a lagging count someone looked at).
    urgent: mpsc::UnboundedSender<String>,
    owners: Owners,
    /// Groups with messages sent here but owned elsewhere, by owner: told once a tick.
    uncounted: Mutex<HashMap<String, HashSet<String>>>,
    /// Groups forwarded to their owner: the first seq forwarded, and when to check that
    /// it was counted (an owner that died, or is dead but not expired from the registry
    /// yet, counts nothing; this gateway then counts it itself).
    forwarded: Mutex<HashMap<String, (u64, Instant)>>,
    /// Groups counted up to a seq whose offline references failed to be written.
    unbuffered: Mutex<HashMap<String, u64>>,
}

/// How long a gateway's registration lasts, and how often it is renewed.
const GATEWAY_TTL: Duration = Duration::from_secs(3);
const GATEWAY_RENEW: Duration = Duration::from_secs(1);

impl Unread {
    /// Starts the flusher (it stops when the returned `Unread` is dropped).
    pub fn start(store: Arc<dyn Store>, bus: Arc<dyn Bus>, policy: FlushPolicy) -> Arc<Self> {
        let (urgent, urgent_rx) = mpsc::unbounded_channel();
        let unread = Arc::new(Self {
            store,
            bus,
            policy,
            stages: Mutex::new(Stages::default()),
            stats: Mutex::new(FlushStats::default()),
            metrics: UnreadMetrics::default(),
            retired: AtomicBool::new(false),
            urgent,
            owners: Owners::new(format!("{:016x}", rand::random::<u64>())),
            uncounted: Mutex::new(HashMap::new()),
            unbuffered: Mutex::new(HashMap::new()),
            forwarded: Mutex::new(HashMap::new()),
        });
        tokio::spawn(flush_forever(Arc::downgrade(&unread), urgent_rx));
        unread
    }

    /// This gateway's id among the live gateways.
    pub fn gateway_id(&self) -> &str {
        self.owners.me()
    }

    /// A message was appended: stage it for counting here if this gateway owns the
    /// group's counts, else tell the owner (once per tick per group) to count it.
    pub fn stage(&self, group: &str, message: Counted) {
        let owner = self.owners.owner(group);
        if owner != self.owners.me() {
            let mut uncounted = self.uncounted.lock().expect("uncounted lock");
            uncounted.entry(owner).or_default().insert(group.to_owned());
            let check_at = Instant::now() + 2 * self.policy.every;
            self.forwarded
                .lock()
                .expect("forwarded lock")
                .entry(group.to_owned())
                .or_insert((message.seq, check_at));
            return;
        }
        let mut stages = self.stages.lock().expect("stages lock");
        let stage = stages.open(group, self.wait());
        stage.messages.push((message, Instant::now()));
        if stage.messages.len() == self.policy.at {
            let _ = self.urgent.send(group.to_owned());
        }
    }

    /// Counts every message of `group` not counted yet, and tells the members' gateways
    /// their new counts.
    pub async fn flush(&self, group: &str) -> Result<(), RequestError> {
        let mut staged = self.take_stage(group);
        for _ in 0..ATTEMPTS {
            let from = self.store.counted_seq(group).await?;
            let Some(info) = self.store.group(group).await? else {
                return Ok(());
            };
            let to = info.head_seq;
            if from >= to {
                return Ok(());
            }
            staged.retain(|(m, _)| m.seq > from && m.seq <= to);
            staged.sort_by_key(|(m, _)| m.seq);
            staged.dedup_by_key(|(m, _)| m.seq);
            let batch = if staged.len() as u64 == to - from {
                staged.iter().map(|(m, _)| m.clone()).collect()
            } else {
                self.read_log(group, from, to).await?
            };
            let members = self.members(group).await?;
            let increments = tally::increments(&batch, &members);
            if let Some(counts) = self
                .store
                .count_unread(group, from, to, &increments)
                .await?
            {
                self.record(batch.len(), &increments, &staged);
                // References after the counts, so they do not delay them; announced after
                // the references, so a device that connects in between learns of the
                // range one way or the other.
                self.buffer_offline(group, to, &members).await;
                self.announce(Topic::Group(group.to_owned()), group, to, counts)
                    .await;
                return Ok(());
            }
            // Someone else counted (part of) it: start again from where they stopped.
        }
        Err(RequestError::Store(crate::store::StoreError::Unavailable(
            format!("counting {group} kept racing another writer"),
        )))
    }

    /// `user`'s counts in every group. Groups whose count lags their log are flushed
    /// soon (within the flush interval); the counts returned are the stored ones.
    pub async fn summary(&self, user: &str) -> Result<UnreadSummary, RequestError> {
        let states = self.store.unread(user).await?;
        for state in states.iter().filter(|s| s.counted_seq < s.head_seq) {
            if !self.is_staged(&state.group) {
                let _ = self.urgent.send(state.group.clone());
            }
        }
        let groups: Vec<UnreadCount> = states
            .into_iter()
            .map(|s| UnreadCount {
                group: s.group,
                count: s.count,
            })
            .collect();
        Ok(UnreadSummary {
            total: groups.iter().map(|g| g.count).sum(),
            groups,
        })
    }

    /// Writes one reference `(group, to)` into the offline buffer of every member past
    /// their watermark (everyone gets the range pushed: placeholders for what they may
    /// not see). A failed write is retried on the next tick; a later flush of the group
    /// supersedes it (references name the latest seq).
    async fn buffer_offline(&self, group: &str, to: u64, members: &[Membership]) {
        let refs: Vec<(String, u64)> = members
            .iter()
            .filter(|m| m.joined_seq < to)
            .map(|m| (m.user.clone(), to))
            .collect();
        let written = self
            .store
            .buffer_offline(group, &refs, self.policy.offline_capacity)
            .await;
        let mut unbuffered = self.unbuffered.lock().expect("unbuffered lock");
        match written {
            Ok(()) => {
                if unbuffered.get(group).is_some_and(|pending| *pending <= to) {
                    unbuffered.remove(group);
                }
            }
            Err(error) => {
                tracing::warn!(%group, %error, "writing offline references failed; retrying");
                unbuffered.insert(group.to_owned(), to);
            }
        }
    }

    /// Counts here the forwarded groups whose owner did not count them in time.
    async fn check_forwarded(&self) {
        let now = Instant::now();
        let due: Vec<(String, u64)> = {
            let mut forwarded = self.forwarded.lock().expect("forwarded lock");
            let due: Vec<(String, u64)> = forwarded
                .iter()
                .filter(|(_, (_, at))| *at <= now)
                .map(|(group, (seq, _))| (group.clone(), *seq))
                .collect();
            for (group, _) in &due {
                forwarded.remove(group);
            }
            due
        };
        for (group, seq) in due {
            match self.store.counted_seq(&group).await {
                Ok(counted) if counted >= seq => {}
                Ok(_) => {
                    tracing::info!(%group, "its counting gateway did not count it; counting here");
                    self.flush_logged(&group).await;
                }
                Err(error) => tracing::debug!(%group, %error, "reading the counted seq failed"),
            }
        }
    }

    /// Retries the offline references that failed to be written.
    async fn retry_unbuffered(&self) {
        let retries: Vec<(String, u64)> = self
            .unbuffered
            .lock()
            .expect("unbuffered lock")
            .iter()
            .map(|(g, to)| (g.clone(), *to))
            .collect();
        for (group, to) in retries {
            match self.members(&group).await {
                Ok(members) => {
                    self.buffer_offline(&group, to, &members).await;
                    self.announce(Topic::Group(group.clone()), &group, to, Vec::new())
                        .await;
                }
                Err(error) => tracing::debug!(%group, %error, "reading members failed"),
            }
        }
    }

    /// Sets `member`'s read marker of their group to `seq` (at most the head; `None`
    /// keeps the current marker, to recount after their view changed, e.g. a delete for
    /// them) and recomputes their count with the same visibility rules as history.
    pub async fn mark_read(
        &self,
        member: &Membership,
        seq: Option<u64>,
        plugins: &Plugins,
    ) -> Result<u64, RequestError> {
        let (group, user) = (member.group.as_str(), member.user.as_str());
        for _ in 0..ATTEMPTS {
            // Count everything up to the head first, so the marker never passes the
            // counted seq and later flushes only add messages after it.
            self.flush(group).await?;
            let counted = self.store.counted_seq(group).await?;
            let read = match seq {
                Some(seq) => seq.min(counted),
                None => self.read_marker(user, group).await?,
            };
            let count = self
                .visible_count(member, read.max(member.joined_seq), counted, plugins)
                .await?;
            if self
                .store
                .mark_read(group, user, read, count, counted)
                .await?
            {
                self.announce(
                    Topic::User(user.to_owned()),
                    group,
                    counted,
                    vec![(user.to_owned(), count)],
                )
                .await;
                return Ok(count);
            }
        }
        Err(RequestError::Store(crate::store::StoreError::Unavailable(
            format!("marking {group} read kept racing another writer"),
        )))
    }

    /// Another gateway sent messages to groups this one counts: stage them (empty, so the
    /// flush reads them from the log).
    pub fn uncounted(&self, groups: Vec<String>) {
        let mut stages = self.stages.lock().expect("stages lock");
        for group in groups {
            stages.open(&group, self.wait());
        }
    }

    /// Tells each owner which of its groups got messages here since the last tick.
    async fn forward_uncounted(&self) {
        let by_owner = std::mem::take(&mut *self.uncounted.lock().expect("uncounted lock"));
        for (owner, groups) in by_owner {
            let event = Event::Uncounted {
                groups: groups.into_iter().collect(),
            };
            if let Err(error) = self.bus.publish(Topic::Gateway(owner), event).await {
                // Counted later from the log: the next message or look at the counts.
                tracing::debug!(%error, "telling a group's counter failed");
            }
        }
    }

    /// Renews this gateway's registration and learns who else is live.
    async fn renew(&self) {
        if self.retired.load(Ordering::SeqCst) {
            return;
        }
        match self
            .store
            .live_gateways(self.owners.me(), now_ms(), GATEWAY_TTL.as_millis() as u64)
            .await
        {
            Ok(live) => self.owners.set_live(live),
            Err(error) => tracing::debug!(%error, "renewing the gateway registration failed"),
        }
    }

    /// Leaves the gateway registry at once (a drained gateway), rather than when its entry
    /// expires: the others take over counting its groups from their next renewal.
    pub async fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        if let Err(error) = self
            .store
            .live_gateways(self.owners.me(), now_ms(), 0)
            .await
        {
            tracing::warn!(%error, "leaving the gateway registry failed; the entry expires by itself");
        }
    }

    /// Counts every staged group now and tells the owners of forwarded ones: for a
    /// gateway about to stop.
    pub async fn flush_all(&self) {
        self.forward_uncounted().await;
        let groups: Vec<String> = self
            .stages
            .lock()
            .expect("stages lock")
            .by_group
            .keys()
            .cloned()
            .collect();
        for group in groups {
            self.flush_logged(&group).await;
        }
    }

    /// Flushes the stages that are due.
    async fn flush_due(&self) {
        let due = self
            .stages
            .lock()
            .expect("stages lock")
            .due_by(Instant::now());
        for group in due {
            self.flush_logged(&group).await;
        }
    }

    /// How long a stage waits before it is flushed: the interval, less a margin for the
    /// flush itself, so no count is older than the interval when it lands.
    fn wait(&self) -> Duration {
        self.policy.every - self.policy.every / 16
    }

    fn next_due(&self) -> Option<Instant> {
        self.stages.lock().expect("stages lock").next_due()
    }

    async fn flush_logged(&self, group: &str) {
        if let Err(error) = self.flush(group).await {
            // The stage is gone but the counted seq did not move: the next flush of this
            // group (a message, a look at the counts) counts the range from the log.
            tracing::warn!(%group, %error, "unread flush failed");
        }
    }

    pub(crate) fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.metrics;
        let counters = [
            ("unread_flushes", "Unread count flushes written", &m.flushes),
            (
                "unread_messages_counted",
                "Messages counted into unread counts",
                &m.messages,
            ),
            (
                "unread_counter_writes",
                "Unread counter writes: one +k per member per flush",
                &m.writes,
            ),
            (
                "unread_increments",
                "The +1s those writes carry (merge ratio: increments / counter writes)",
                &m.increments,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        crate::metrics::register_seconds(
            registry,
            "unread_staleness",
            "How long a message waited until its unread counts were written",
            m.staleness.clone(),
        );
    }

    /// What flushing has done so far.
    pub fn stats(&self) -> FlushStats {
        self.stats.lock().expect("stats lock").clone()
    }

    fn record(&self, messages: usize, increments: &[(String, u64)], staged: &[(Counted, Instant)]) {
        let m = &self.metrics;
        m.flushes.inc();
        m.messages.inc_by(messages as u64);
        m.writes.inc_by(increments.len() as u64);
        m.increments
            .inc_by(increments.iter().map(|(_, k)| k).sum::<u64>());
        let mut stats = self.stats.lock().expect("stats lock");
        stats.flushes += 1;
        stats.messages += messages as u64;
        stats.increments += increments.len() as u64;
        for (_, at) in staged {
            let waited = at.elapsed();
            m.staleness.observe(waited.as_secs_f64());
            stats.staleness.push(waited);
        }
        let excess = stats.staleness.len().saturating_sub(STALENESS_SAMPLES);
        stats.staleness.drain(..excess);
    }

    /// How often the timer looks for due stages.
    fn tick(&self) -> Duration {
        (self.policy.every / 10).max(Duration::from_millis(10))
    }

    fn take_stage(&self, group: &str) -> Vec<(Counted, Instant)> {
        self.stages.lock().expect("stages lock").take(group)
    }

    fn is_staged(&self, group: &str) -> bool {
        self.stages
            .lock()
            .expect("stages lock")
            .by_group
            .contains_key(group)
    }

    /// Publishes new counts, and that `group` is counted (so in offline buffers) up to
    /// `counted`: even with no count changed, a device that connected after the messages
    /// were sent and before this flush learns of them this way.
    async fn announce(&self, topic: Topic, group: &str, counted: u64, counts: Vec<(String, u64)>) {
        let event = Event::Unread {
            group: group.to_owned(),
            counted,
            counts,
        };
        if let Err(error) = self.bus.publish(topic, event).await {
            // Clients see the new counts on their next look.
            tracing::debug!(%group, %error, "publishing unread counts failed");
        }
    }

    async fn members(&self, group: &str) -> Result<Vec<Membership>, RequestError> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map_or("", |m: &Membership| m.user.as_str());
            let page = self.store.members(group, after, MEMBERS_PAGE).await?;
            let done = page.len() < MEMBERS_PAGE;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    /// Messages `from + 1 ..= to` of the log, as counting needs them.
    async fn read_log(
        &self,
        group: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<Counted>, RequestError> {
        let mut batch = Vec::new();
        let mut pages = LogPages::new(self.store.as_ref(), group, from, to);
        while let Some(page) = pages.next().await? {
            batch.extend(page.iter().map(Counted::from));
        }
        Ok(batch)
    }

    /// How many of messages `after + 1 ..= to` `member` sees in history and did not send.
    async fn visible_count(
        &self,
        member: &Membership,
        after: u64,
        to: u64,
        plugins: &Plugins,
    ) -> Result<u64, RequestError> {
        let (group, user) = (member.group.as_str(), member.user.as_str());
        let mut count = 0;
        let mut pages = LogPages::new(self.store.as_ref(), group, after, to);
        while let Some(page) = pages.next().await? {
            let hidden: HashSet<u64> = plugins.hidden(user, group, &page).await?;
            count += page
                .iter()
                .filter(|m| m.sender != user && m.visible_to(user) && !hidden.contains(&m.seq))
                .count() as u64;
        }
        Ok(count)
    }

    async fn read_marker(&self, user: &str, group: &str) -> Result<u64, RequestError> {
        Ok(self.store.read_marker(group, user).await?)
    }
}

/// Pages of messages `after + 1 ..= to` of a group's log, oldest first.
struct LogPages<'a> {
    store: &'a dyn Store,
    group: &'a str,
    after: u64,
    to: u64,
}

impl<'a> LogPages<'a> {
    fn new(store: &'a dyn Store, group: &'a str, after: u64, to: u64) -> Self {
        Self {
            store,
            group,
            after,
            to,
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<StoredMessage>>, RequestError> {
        if self.after >= self.to {
            return Ok(None);
        }
        let range = SeqRange {
            after: self.after,
            before: self.to + 1,
        };
        let page = self
            .store
            .messages(self.group, range, PageFrom::Oldest, LOG_PAGE)
            .await?;
        self.after = page.last().map_or(self.to, |last| last.seq);
        Ok((!page.is_empty()).then_some(page))
    }
}

/// The Timer and the Flusher: flushes each stage when due, urgent groups at once.
async fn flush_forever(unread: Weak<Unread>, mut urgent: mpsc::UnboundedReceiver<String>) {
    let mut renew = tokio::time::interval(GATEWAY_RENEW);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Wake for the earliest stage, and at least every tick for forwarding and for
        // stages opened meanwhile.
        let Some(wake) = unread.upgrade().map(|u| {
            let tick = tokio::time::Instant::now() + u.tick();
            u.next_due().map_or(tick, |due| tick.min(due.into()))
        }) else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {
                let Some(unread) = unread.upgrade() else { return };
                unread.forward_uncounted().await;
                unread.flush_due().await;
                unread.retry_unbuffered().await;
                unread.check_forwarded().await;
            }
            _ = renew.tick() => {
                let Some(unread) = unread.upgrade() else { return };
                unread.renew().await;
            }
            group = urgent.recv() => {
                let (Some(group), Some(unread)) = (group, unread.upgrade()) else { return };
                unread.flush_logged(&group).await;
            }
        }
    }
}
