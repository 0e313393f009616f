//! Writes the push stream of one connection: live pushes from the node, catch-up from the
//! log, retransmits, all through the connection's [`Delivery`] state machine.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::{AckPolicy, ErrorCode, Frame, Message, encode_push};
use quinn::SendStream;
use std::time::Instant;
use tokio::sync::mpsc;

use super::Shared;
use super::connection::Refusal;
use super::cursors::Cursors;
use super::stats::ServerMetrics;
use crate::node::{Attached, Control, Push};
use crate::plugins::Plugins;
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
    cursors: &'a Cursors,
    user: &'a str,
    device: &'a str,
    delivery: Delivery,
    pushes: mpsc::Receiver<Arc<Push>>,
    control: mpsc::UnboundedReceiver<Control>,
    lagged: Arc<AtomicBool>,
    /// Frames to write at the end of this turn, in order.
    out: Vec<Bytes>,
    retry_catch_up_at: Option<Instant>,
    /// Acknowledged seqs not saved yet: merged and written at most once per
    /// `save_cursors_every` (and when the connection ends), not once per Ack frame.
    unsaved_cursors: HashMap<String, u64>,
    save_cursors_at: Option<Instant>,
    save_cursors_every: Duration,
    /// Groups behind on connect, and the seq the device must acknowledge in each before
    /// it is in sync with the offline buffer up to `sync_position`.
    unsynced: HashMap<String, u64>,
    sync_position: Option<u64>,
    /// Groups assumed current on connect that have had no push since: a message sent
    /// before the connect but counted after it reaches them only through `Counted`.
    unconfirmed: HashSet<String>,
    /// When the oldest live push waiting in `out` reached this gateway.
    oldest_live: Option<Instant>,
    /// Wakes the connection for retransmits, a catch-up retry or a cursor save, at `timer_at`.
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
        let mut delivery = Delivery::new(live, catch_up, shared.config.delivery.window);
        let cursors: HashMap<&str, u64> = resume
            .cursors
            .iter()
            .map(|(g, s)| (g.as_str(), *s))
            .collect();
        let max_catch_up = shared.config.offline.max_catch_up;
        let (mut out, mut unsaved_cursors) = (Vec::new(), HashMap::new());
        let (mut unsynced, mut unconfirmed) = (HashMap::new(), HashSet::new());
        for m in &resume.groups {
            // Resume after what this device acknowledged, never before the join watermark.
            let after = cursors
                .get(m.group.as_str())
                .copied()
                .unwrap_or(0)
                .max(m.joined_seq);
            // Read only the logs that hold something new, and at most the newest
            // `max_catch_up` messages of each: the client is told what it skipped.
            match resume.latest.get(&m.group) {
                Some(&latest) if latest > after => {
                    let start = after.max(latest.saturating_sub(max_catch_up));
                    if start > after {
                        out.push(
                            Frame::Skipped {
                                group: m.group.clone(),
                                first: after + 1,
                                last: start,
                            }
                            .encode(),
                        );
                        unsaved_cursors.insert(m.group.clone(), start);
                        shared.metrics.skipped.inc_by(start - after);
                    }
                    delivery.join(&m.group, start);
                    unsynced.insert(m.group.clone(), latest);
                }
                _ => {
                    delivery.join_current(&m.group, after);
                    unconfirmed.insert(m.group.clone());
                }
            }
        }
        let save_cursors_every = shared.config.flush_policy().every;
        Self {
            store: shared.node.store.as_ref(),
            plugins: &shared.node.plugins,
            metrics: &shared.metrics,
            cursors: &shared.cursors,
            user,
            device,
            delivery,
            pushes: attached.pushes,
            control: attached.control,
            lagged: attached.lagged,
            retry_catch_up_at: None,
            save_cursors_at: (!unsaved_cursors.is_empty())
                .then(|| Instant::now() + save_cursors_every),
            out,
            oldest_live: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_at: None,
            unsaved_cursors,
            save_cursors_every,
            unsynced,
            sync_position: Some(resume.position),
            unconfirmed,
        }
    }

    pub(crate) async fn run(mut self, mut stream: SendStream) -> Result<(), Refusal> {
        let result = self.serve(&mut stream).await;
        self.save_progress().await;
        // A device reconnecting elsewhere right away resumes from what this one acknowledged.
        self.cursors.flush().await;
        result
    }

    async fn serve(&mut self, stream: &mut SendStream) -> Result<(), Refusal> {
        loop {
            self.catch_up().await;
            self.flush(stream).await?;
            let deadline = [
                self.delivery.next_deadline(),
                self.retry_catch_up_at,
                self.save_cursors_at,
            ]
            .into_iter()
            .flatten()
            .min();
            // One timer per connection, moved only when the deadline does: not a timer
            // registered and cancelled every turn.
            if deadline != self.timer_at {
                if let Some(at) = deadline {
                    self.timer.as_mut().reset(at.into());
                }
                self.timer_at = deadline;
            }
            tokio::select! {
                push = self.pushes.recv() => {
                    let Some(push) = push else { return Ok(()) };
                    self.offer_live(push);
                    self.take_queued();
                    if self.out.len() < BATCH {
                        // Let the tasks already woken (the node fanning out the events that
                        // arrived with this one) run first: more pushes share each packet.
                        tokio::task::yield_now().await;
                        self.take_queued();
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
                    if self.save_cursors_at.is_some_and(|at| at <= now) {
                        self.save_progress().await;
                    }
                }
            }
            if self.lagged.swap(false, Ordering::Relaxed) {
                self.delivery.resync_all();
            }
        }
    }

    /// Offers what else is queued, up to a batch.
    fn take_queued(&mut self) {
        while self.out.len() < BATCH {
            match self.pushes.try_recv() {
                Ok(push) => self.offer_live(push),
                Err(_) => break,
            }
        }
    }

    fn offer_live(&mut self, push: Arc<Push>) {
        let now = Instant::now();
        self.unconfirmed.remove(&push.group);
        if self
            .delivery
            .offer(&push.group, push.seq, &push.bytes, false, now)
            == Offer::Send
        {
            self.metrics.pushes.inc();
            self.oldest_live.get_or_insert(push.received);
            self.out.push(push.bytes.clone());
        }
    }

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Joined { group, joined_seq } => self.delivery.join(&group, joined_seq),
            Control::Left { group } => self.delivery.leave(&group),
            Control::Finish => {}
            Control::Resync => self.delivery.resync_all(),
            Control::Notice(frame) => self.out.push(frame),
            Control::Counted { group, seq } => {
                if self.unconfirmed.remove(&*group)
                    && self.delivery.sent(&group).is_some_and(|sent| sent < seq)
                {
                    self.delivery.mark_behind(&group);
                }
            }
            Control::Ack(ranges) => {
                let in_flight = self.delivery.in_flight();
                let advanced = self.delivery.ack(&ranges);
                self.metrics
                    .acked
                    .inc_by((in_flight - self.delivery.in_flight()) as u64);
                for (group, seq) in advanced {
                    let saved = self.unsaved_cursors.entry(group).or_default();
                    *saved = (*saved).max(seq);
                }
                let delivery = &self.delivery;
                self.unsynced
                    .retain(|group, latest| delivery.acked(group).is_some_and(|a| a < *latest));
                if !self.unsaved_cursors.is_empty() && self.save_cursors_at.is_none() {
                    self.save_cursors_at = Some(Instant::now() + self.save_cursors_every);
                }
            }
        }
    }

    /// Writes the merged cursor advances in one store call and, once the device has
    /// everything its offline buffer named on connect, that it is in sync up to there.
    async fn save_progress(&mut self) {
        self.save_cursors();
        if !self.unsynced.is_empty() {
            return;
        }
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

    /// Hands the merged cursor advances to the gateway's batcher (`Cursors`).
    fn save_cursors(&mut self) {
        self.save_cursors_at = None;
        if !self.unsaved_cursors.is_empty() {
            self.cursors
                .record(self.user, self.device, self.unsaved_cursors.drain());
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
            self.unconfirmed.remove(group);
            let hidden = self.plugins.hidden(self.user, group, &page).await?;
            let now = Instant::now();
            for message in page {
                let seq = message.seq;
                let bytes =
                    encode_push(&render(self.user, message, &hidden, Message::FLAG_CATCH_UP));
                if self.delivery.offer(group, seq, &bytes, true, now) != Offer::Send {
                    return Ok(());
                }
                self.metrics.pushes.inc();
                self.out.push(bytes);
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn flush(&mut self, stream: &mut SendStream) -> Result<(), Refusal> {
        if self.out.is_empty() {
            return Ok(());
        }
        stream
            .write_all_chunks(&mut self.out)
            .await
            .map_err(|e| Refusal {
                code: ErrorCode::INTERNAL,
                reason: format!("push stream failed: {e}"),
            })?;
        self.out.clear();
        if let Some(oldest) = self.oldest_live.take() {
            self.metrics
                .push_delay
                .observe(oldest.elapsed().as_secs_f64());
        }
        Ok(())
    }
}
