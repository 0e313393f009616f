//! Writes the push stream of one connection: live pushes from the node, catch-up from the
//! log, retransmits, all through the connection's [`Delivery`] state machine.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::{AckPolicy, ErrorCode, Frame, GroupActivity, Message, encode_push};
use std::time::Instant;
use tokio::sync::mpsc;

use super::Shared;
use super::connection::Refusal;
use super::cursors::DeviceCursors;
use super::stats::ServerMetrics;
use crate::node::{Attached, ConnFlags, Control, GroupFocus, Push};
use crate::plugins::Plugins;
use crate::quic::Link;
use crate::session::RequestError;
use crate::session::visibility::render;
use crate::session::{Delivery, Offer};
use crate::store::{Membership, PageFrom, SeqRange, Store};

/// Most live pushes taken from the queue for one write.
const BATCH: usize = 64;
/// Most messages read from the log per catch-up page.
const CATCH_UP_PAGE: usize = 256;
/// Wait before retrying a catch-up after the store failed.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Longest an `UnreadChanged` waits for a push to share its packet: at most one such frame
/// per group per count flush, so waiting saves a packet (and the client's ACK of it) per
/// member and flush in any group with traffic.
const UNREAD_HOLD: Duration = Duration::from_millis(250);
/// Most groups named in one `Activity` frame.
const ACTIVITY_FRAME_GROUPS: usize = 1000;

/// Where a new connection's delivery starts: the user's groups, this device's cursors,
/// and the latest seq of each group that may hold something new for it.
pub(crate) struct Resume {
    pub groups: Vec<Membership>,
    pub cursors: Vec<(String, u64)>,
    /// From the offline buffer (or, when it cannot say, every group's head); a group not
    /// named has nothing new.
    pub latest: HashMap<String, u64>,
    /// The offline-buffer position `latest` covers.
    pub position: u64,
}

pub(crate) struct Pusher<'a> {
    store: &'a dyn Store,
    plugins: &'a Plugins,
    metrics: &'a ServerMetrics,
    cursors: DeviceCursors,
    user: &'a str,
    device: &'a str,
    max_catch_up: u64,
    delivery: Delivery,
    pushes: mpsc::Receiver<Arc<Push>>,
    control: mpsc::UnboundedReceiver<Control>,
    flags: Arc<ConnFlags>,
    /// Frames to write at the end of this turn, in order.
    out: Vec<Bytes>,
    /// `UnreadChanged` frames waiting for the next write, until `release_unread_at`.
    unread: Vec<Bytes>,
    release_unread_at: Option<Instant>,
    retry_catch_up_at: Option<Instant>,
    /// Groups behind on connect, and the seq the device must acknowledge in each before
    /// it is in sync with the offline buffer up to `sync_position`.
    unsynced: HashMap<String, u64>,
    sync_position: Option<u64>,
    /// Groups assumed current on connect that have had no push since: a message sent
    /// before the connect but counted after it reaches them only through `Counted`.
    unconfirmed: HashSet<String>,
    /// Background groups with messages not reported yet, and when the next `Activity`
    /// may go: at once for the first, then at most one per `activity_every`.
    activity: Vec<Arc<GroupFocus>>,
    activity_at: Option<Instant>,
    activity_sent_at: Option<Instant>,
    activity_every: Duration,
    /// When the oldest live push waiting in `out` reached this gateway.
    oldest_live: Option<Instant>,
    /// Wakes the connection for retransmits, a catch-up retry or held `UnreadChanged`
    /// frames, at `timer_at`.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    timer_at: Option<Instant>,
}

impl<'a> Pusher<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        user: &'a str,
        device: &'a str,
        resume: &Resume,
        (live, catch_up): (AckPolicy, AckPolicy),
        attached: Attached,
    ) -> Self {
        let config = &shared.config;
        let mut pusher = Self {
            store: shared.node.store.as_ref(),
            plugins: &shared.node.plugins,
            metrics: &shared.metrics,
            cursors: shared.cursors.device(user, device),
            user,
            device,
            max_catch_up: config.offline.max_catch_up,
            delivery: Delivery::new(live, catch_up, config.delivery.window),
            pushes: attached.pushes,
            control: attached.control,
            flags: attached.flags,
            out: Vec::new(),
            unread: Vec::new(),
            release_unread_at: None,
            retry_catch_up_at: None,
            unsynced: HashMap::new(),
            sync_position: Some(resume.position),
            unconfirmed: HashSet::new(),
            activity: Vec::new(),
            activity_at: None,
            activity_sent_at: None,
            activity_every: Duration::from_millis(config.delivery.activity_ms.into()),
            oldest_live: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_at: None,
        };
        let cursors: HashMap<&str, u64> = resume
            .cursors
            .iter()
            .map(|(g, s)| (g.as_str(), *s))
            .collect();
        for m in &resume.groups {
            // Resume after what this device acknowledged, never before the join watermark.
            let after = cursors
                .get(m.group.as_str())
                .copied()
                .unwrap_or(0)
                .max(m.joined_seq);
            // Read only the logs that hold something new.
            match resume.latest.get(&m.group) {
                Some(&latest) if latest > after => {
                    pusher.delivery.join(&m.group, after);
                    pusher.skip_to_newest(&m.group, latest);
                    pusher.unsynced.insert(m.group.clone(), latest);
                }
                _ => {
                    pusher.delivery.join_current(&m.group, after);
                    pusher.unconfirmed.insert(m.group.clone());
                }
            }
        }
        if pusher.unconfirmed.is_empty() {
            pusher.flags.wants_counted.store(false, Ordering::Relaxed);
        }
        pusher
    }

    /// Pushing `group` goes on at most `max_catch_up` messages before `latest`: the client
    /// is told which older ones it skipped, and the cursor moves past them as if they were
    /// acknowledged (once nothing before them is in flight).
    fn skip_to_newest(&mut self, group: &str, latest: u64) {
        let Some(sent) = self.delivery.sent(group) else {
            return;
        };
        let start = latest.saturating_sub(self.max_catch_up);
        if start <= sent {
            return;
        }
        self.out.push(
            Frame::Skipped {
                group: group.to_owned(),
                first: sent + 1,
                last: start,
            }
            .encode(),
        );
        self.metrics.skipped.inc_by(start - sent);
        if let Some(cursor) = self.delivery.skip_to(group, start) {
            self.cursors.record([(Arc::from(group), cursor)]);
        }
    }

    pub(crate) async fn run(mut self, link: &Link) -> Result<(), Refusal> {
        let result = self.serve(link).await;
        // A device reconnecting elsewhere right away resumes from what this one acknowledged.
        Box::pin(self.cursors.flush()).await;
        result
    }

    async fn serve(&mut self, link: &Link) -> Result<(), Refusal> {
        if self.unsynced.is_empty() {
            // In sync from the start: written while connecting. Not at the first ACK: the
            // sync point waits for a store write, and 5,000 connections acknowledging their
            // first push at once queued 5,000 writes (steady-5k p99 0.9 → 19.7 s).
            Box::pin(self.save_sync_point()).await;
        }
        loop {
            // Boxed, like the other rare steps: the pusher's own state stays small while
            // it waits (one per connection).
            if self.delivery.has_behind() {
                Box::pin(self.catch_up()).await;
            }
            self.flush(link).await?;
            let deadline = [
                self.delivery.next_deadline(),
                self.retry_catch_up_at,
                self.release_unread_at,
                self.activity_at,
            ]
            .into_iter()
            .flatten()
            .min();
            // One timer per connection, moved only when the deadline comes sooner: it fires
            // about once per retransmit timeout while ACKs keep up (each firing drops the
            // acknowledged entries), not once per push.
            if let Some(at) = deadline.filter(|at| self.timer_at.is_none_or(|t| *at < t)) {
                self.timer.as_mut().reset(at.into());
                self.timer_at = Some(at);
            }
            tokio::select! {
                push = self.pushes.recv() => {
                    let Some(push) = push else { return Ok(()) };
                    let now = Instant::now();
                    self.offer_live(push, now);
                    self.take_queued(now);
                    if self.out.len() < BATCH {
                        // Let the tasks already woken (the node fanning out the events that
                        // arrived with this one) run first: more pushes share each packet.
                        tokio::task::yield_now().await;
                        self.take_queued(Instant::now());
                    }
                }
                control = self.control.recv() => match control {
                    Some(Control::Finish) | None => return Ok(()),
                    Some(control) => self.on_control(control).await,
                },
                _ = &mut self.timer, if self.timer_at.is_some() => {
                    self.timer_at = None;
                    let now = Instant::now();
                    let due = self.delivery.due_retransmits(now);
                    self.metrics.retransmits.inc_by(due.len() as u64);
                    self.out.extend(due);
                }
            }
            if self.flags.lagged.swap(false, Ordering::Relaxed) {
                self.delivery.resync_all();
            }
        }
    }

    /// Offers what else is queued, up to a batch (one clock reading for all of them).
    fn take_queued(&mut self, now: Instant) {
        while self.out.len() < BATCH {
            match self.pushes.try_recv() {
                Ok(push) => self.offer_live(push, now),
                Err(_) => break,
            }
        }
    }

    fn offer_live(&mut self, push: Arc<Push>, now: Instant) {
        if !self.unconfirmed.is_empty() {
            self.confirm(&push.group);
        }
        if self.delivery.offer(&push, false, now) == Offer::Send {
            self.metrics.pushes.inc();
            self.oldest_live.get_or_insert(push.received);
            self.out.push(push.bytes.clone());
        }
    }

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Joined {
                group,
                joined_seq,
                background,
            } => {
                self.delivery.join(&group, joined_seq);
                self.delivery.set_background(&group, background);
            }
            Control::Focus {
                group,
                background: true,
                ..
            } => {
                // Caught up from the log when it comes back: no `Counted` needed for it.
                self.confirm(&group);
                self.delivery.set_background(&group, true);
            }
            Control::Focus {
                group,
                background: false,
                latest,
            } => {
                if self.delivery.is_background(&group) {
                    self.skip_to_newest(&group, latest);
                    self.delivery.set_background(&group, false);
                }
            }
            Control::Activity(focus) => {
                self.activity.push(focus);
                let now = Instant::now();
                let allowed = self
                    .activity_sent_at
                    .map_or(now, |at| at + self.activity_every);
                self.activity_at.get_or_insert(allowed.max(now));
            }
            Control::Left { group } => self.delivery.leave(&group),
            Control::Finish => {}
            Control::Resync => self.delivery.resync_all(),
            Control::Notice(frame) => self.out.push(frame),
            Control::Unread(frame) => {
                self.unread.push(frame);
                self.release_unread_at
                    .get_or_insert_with(|| Instant::now() + UNREAD_HOLD);
            }
            Control::Counted { group, seq } => {
                if self.confirm(&group) && self.delivery.sent(&group).is_some_and(|sent| sent < seq)
                {
                    self.delivery.mark_behind(&group);
                }
            }
            Control::Ack(ranges) => {
                let in_flight = self.delivery.in_flight();
                let advanced = self.delivery.ack(&ranges, Instant::now());
                self.metrics
                    .acked
                    .inc_by((in_flight - self.delivery.in_flight()) as u64);
                if !advanced.is_empty() {
                    // Merged with every other connection's and written once per interval.
                    self.cursors.record(advanced);
                }
                if !self.unsynced.is_empty() {
                    let delivery = &self.delivery;
                    self.unsynced
                        .retain(|group, latest| delivery.acked(group).is_some_and(|a| a < *latest));
                    if self.unsynced.is_empty() {
                        Box::pin(self.save_sync_point()).await;
                    }
                }
            }
        }
    }

    /// Once the device has everything its offline buffer named on connect: it is in sync
    /// up to there (written once per connection).
    async fn save_sync_point(&mut self) {
        let Some(position) = self.sync_position.take() else {
            return;
        };
        // The sync point claims the cursors it covers are stored: write them first.
        self.cursors.flush().await;
        if let Err(error) = self
            .store
            .offline_synced(self.user, self.device, position)
            .await
        {
            // The next connect of this device is more careful: it reads every head.
            tracing::warn!(user = %self.user, %error, "saving the offline sync point failed");
        }
    }

    /// Reads groups that fell behind from the log, as far as the window allows.
    async fn catch_up(&mut self) {
        if self.retry_catch_up_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.retry_catch_up_at = None;
        for group in self.delivery.take_behind() {
            if let Err(error) = self.catch_up_group(&group).await {
                tracing::warn!(user = %self.user, %group, %error, "catch-up from the log failed; retrying");
                self.delivery.mark_behind(&group);
                self.retry_catch_up_at = Some(Instant::now() + STORE_RETRY);
            }
        }
    }

    /// Pushes what `group`'s log holds past what was sent, as this user may see it.
    async fn catch_up_group(&mut self, group: &str) -> Result<(), RequestError> {
        let name: Arc<str> = group.into();
        loop {
            let (Some(after), room) = (self.delivery.sent(group), self.delivery.room()) else {
                return Ok(());
            };
            let limit = room.min(CATCH_UP_PAGE);
            if limit == 0 {
                // The window is full: go on once ACKs make room.
                self.delivery.mark_behind(group);
                return Ok(());
            }
            let range = SeqRange {
                after,
                before: u64::MAX,
            };
            let page = self
                .store
                .messages(group, range, PageFrom::Oldest, limit)
                .await?;
            let full = page.len() == limit;
            self.confirm(group);
            let hidden = self.plugins.hidden(self.user, group, &page).await?;
            let now = Instant::now();
            for message in page {
                let push = Arc::new(Push {
                    group: name.clone(),
                    seq: message.seq,
                    bytes: encode_push(&render(
                        self.user,
                        message,
                        &hidden,
                        Message::FLAG_CATCH_UP,
                    )),
                    received: now,
                });
                if self.delivery.offer(&push, true, now) != Offer::Send {
                    return Ok(());
                }
                self.metrics.pushes.inc();
                self.out.push(push.bytes.clone());
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// `group` has had a push since the connect (see `unconfirmed`); true if it had not.
    fn confirm(&mut self, group: &str) -> bool {
        let confirmed = self.unconfirmed.remove(group);
        if confirmed && self.unconfirmed.is_empty() {
            self.flags.wants_counted.store(false, Ordering::Relaxed);
        }
        confirmed
    }

    /// One `Activity` frame (or a few) naming the background groups with new messages.
    fn report_activity(&mut self, now: Instant) {
        let mut groups = Vec::new();
        for focus in std::mem::take(&mut self.activity) {
            let Some(seq) = focus.take_unreported() else {
                continue;
            };
            let (true, Some(sent)) = (
                self.delivery.is_background(&focus.group),
                self.delivery.sent(&focus.group),
            ) else {
                continue;
            };
            groups.push(GroupActivity {
                group: focus.group.to_string(),
                seq,
                pending: seq.saturating_sub(sent),
            });
        }
        for chunk in groups.chunks(ACTIVITY_FRAME_GROUPS) {
            let frame = Frame::Activity {
                groups: chunk.to_vec(),
            };
            self.out.push(frame.encode());
        }
        self.activity_at = None;
        if !groups.is_empty() {
            self.metrics.activity.inc_by(groups.len() as u64);
            self.activity_sent_at = Some(now);
        }
    }

    async fn flush(&mut self, link: &Link) -> Result<(), Refusal> {
        let release = |at: Option<Instant>| at.is_some_and(|at| at <= Instant::now());
        if release(self.activity_at) {
            self.report_activity(Instant::now());
        }
        if !self.unread.is_empty() && (!self.out.is_empty() || release(self.release_unread_at)) {
            self.out.append(&mut self.unread);
            self.release_unread_at = None;
        }
        if self.out.is_empty() {
            return Ok(());
        }
        link.write_push(&mut self.out).await.map_err(|e| Refusal {
            code: ErrorCode::INTERNAL,
            reason: format!("push stream failed: {e}"),
        })?;
        if let Some(oldest) = self.oldest_live.take() {
            self.metrics
                .push_delay
                .observe(oldest.elapsed().as_secs_f64());
        }
        Ok(())
    }
}
