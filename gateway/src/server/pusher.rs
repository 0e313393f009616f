//! The push side of one connection: live pushes from the node, catch-up from the log,
//! retransmits, all through the connection's [`Delivery`] state machine. It runs inside
//! the endpoint loop ([`super::pushers`]): every call returns at once, frames collect in
//! `out` until the loop writes them, and what needs the store runs in a spawned task
//! that answers through the pushers' inbox.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_protocol::{AckPolicy, Frame, GroupActivity, Message, encode_push};

use super::Shared;
use super::cursors::DeviceCursors;
use super::pushers::{Env, PushCommand};
use crate::node::{ConnFlags, Control, GroupFocus, Push};
use crate::plugins::Plugins;
use crate::quic::{ConnKey, Streams};
use crate::session::RequestError;
use crate::session::visibility::render;
use crate::session::{Delivery, Offer};
use crate::store::{Membership, PageFrom, SeqRange, Store};

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

/// A page of a group's log, rendered for one user: what a catch-up task hands back.
pub(crate) struct CatchUpPage {
    pub pushes: Vec<Arc<Push>>,
    /// The page was as long as asked: the log may hold more.
    pub full: bool,
}

pub(crate) struct Pusher {
    conn: ConnKey,
    user: Arc<str>,
    device: Arc<str>,
    cursors: DeviceCursors,
    max_catch_up: u64,
    delivery: Delivery,
    flags: Arc<ConnFlags>,
    /// Frames to write when the loop settles this connection, in order.
    out: Vec<Bytes>,
    /// `UnreadChanged` frames waiting for the next write, until `release_unread_at`.
    unread: Vec<Bytes>,
    release_unread_at: Option<Instant>,
    /// A catch-up page is being read (one at a time per connection).
    reading: bool,
    /// Groups taken from the delivery's behind set, to read one after another.
    behind: VecDeque<String>,
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
    /// The deadline the pushers' timer set holds for this connection.
    pub(super) timer_at: Option<Instant>,
    /// Offered pushes this turn and not settled yet (listed in `Pushers::offered`).
    pub(super) offered: bool,
}

impl Pusher {
    pub(crate) fn new(
        shared: &Shared,
        conn: ConnKey,
        (user, device): (&str, &str),
        resume: &Resume,
        (live, catch_up): (AckPolicy, AckPolicy),
        flags: Arc<ConnFlags>,
    ) -> Self {
        let config = &shared.config;
        let mut pusher = Self {
            conn,
            user: user.into(),
            device: device.into(),
            cursors: shared.cursors.device(user, device),
            max_catch_up: config.offline.max_catch_up,
            delivery: Delivery::new(live, catch_up, config.delivery.window),
            flags,
            out: Vec::new(),
            unread: Vec::new(),
            release_unread_at: None,
            reading: false,
            behind: VecDeque::new(),
            retry_catch_up_at: None,
            unsynced: HashMap::new(),
            sync_position: Some(resume.position),
            unconfirmed: HashSet::new(),
            activity: Vec::new(),
            activity_at: None,
            activity_sent_at: None,
            activity_every: Duration::from_millis(config.delivery.activity_ms.into()),
            timer_at: None,
            offered: false,
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
                    pusher.skip_to_newest(&m.group, latest, &shared.metrics.skipped);
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

    /// The connection starts: in sync from the start, its sync point is written now. Not
    /// at the first ACK: 5,000 connections acknowledging their first push at once queued
    /// 5,000 store writes (steady-5k p99 0.9 → 19.7 s).
    pub(super) fn start(&mut self, env: &Env) {
        if self.unsynced.is_empty() {
            self.save_sync_point(env);
        }
    }

    /// Pushing `group` goes on at most `max_catch_up` messages before `latest`: the client
    /// is told which older ones it skipped, and the cursor moves past them as if they were
    /// acknowledged (once nothing before them is in flight).
    fn skip_to_newest(
        &mut self,
        group: &str,
        latest: u64,
        skipped: &prometheus_client::metrics::counter::Counter,
    ) {
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
        skipped.inc_by(start - sent);
        if let Some(cursor) = self.delivery.skip_to(group, start) {
            self.cursors.record([(Arc::from(group), cursor)]);
        }
    }

    /// Offers one live push; true if it goes out.
    pub(super) fn offer_live(&mut self, push: &Arc<Push>, now: Instant) -> bool {
        if !self.unconfirmed.is_empty() {
            self.confirm(&push.group);
        }
        let send = self.delivery.offer(push, false, now) == Offer::Send;
        if send {
            self.out.push(push.bytes.clone());
        }
        send
    }

    /// Live events may have been missed: every group catches up from the log.
    pub(super) fn resync(&mut self) {
        self.delivery.resync_all();
    }

    pub(super) fn on_control(&mut self, control: Control, env: &Env, now: Instant) {
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
                    self.skip_to_newest(&group, latest, &env.metrics.skipped);
                    self.delivery.set_background(&group, false);
                }
            }
            Control::Activity(focus) => {
                self.activity.push(focus);
                let allowed = self
                    .activity_sent_at
                    .map_or(now, |at| at + self.activity_every);
                self.activity_at.get_or_insert(allowed.max(now));
            }
            Control::Left { group } => self.delivery.leave(&group),
            Control::Resync => self.delivery.resync_all(),
            Control::Notice(frame) => self.out.push(frame),
            Control::Unread(frame) => {
                self.unread.push(frame);
                self.release_unread_at.get_or_insert(now + UNREAD_HOLD);
            }
            Control::Counted { group, seq } => {
                if self.confirm(&group) && self.delivery.sent(&group).is_some_and(|sent| sent < seq)
                {
                    self.delivery.mark_behind(&group);
                }
            }
            Control::Ack(ranges) => {
                let in_flight = self.delivery.in_flight();
                let advanced = self.delivery.ack(&ranges, now);
                env.metrics
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
                        self.save_sync_point(env);
                    }
                }
            }
        }
    }

    /// Once the device has everything its offline buffer named on connect: it is in sync
    /// up to there (written once per connection, by a task of its own).
    fn save_sync_point(&mut self, env: &Env) {
        let Some(position) = self.sync_position.take() else {
            return;
        };
        let (store, cursors) = (env.store.clone(), env.cursors.clone());
        let (user, device) = (self.user.clone(), self.device.clone());
        tokio::spawn(async move {
            // The sync point claims the cursors it covers are stored: write them first.
            cursors.flush().await;
            if let Err(error) = store.offline_synced(&user, &device, position).await {
                // The next connect of this device is more careful: it reads every head.
                tracing::warn!(%user, %error, "saving the offline sync point failed");
            }
        });
    }

    /// Retransmits what is due at `now`.
    pub(super) fn on_timer(&mut self, now: Instant, env: &Env) {
        let due = self.delivery.due_retransmits(now);
        env.metrics.retransmits.inc_by(due.len() as u64);
        self.out.extend(due);
    }

    /// Starts reading the next group that fell behind from the log, as far as the window
    /// allows, unless a read is under way or waits to be retried.
    fn catch_up(&mut self, env: &Env, now: Instant) {
        if self.reading || self.retry_catch_up_at.is_some_and(|at| now < at) {
            return;
        }
        self.retry_catch_up_at = None;
        loop {
            if self.behind.is_empty() {
                if !self.delivery.has_behind() {
                    return;
                }
                self.behind.extend(self.delivery.take_behind());
            }
            let Some(group) = self.behind.pop_front() else {
                // No room in the window: go on once ACKs make some.
                return;
            };
            let (Some(after), room) = (self.delivery.sent(&group), self.delivery.room()) else {
                continue; // left meanwhile
            };
            let limit = room.min(CATCH_UP_PAGE);
            if limit == 0 {
                self.delivery.mark_behind(&group);
                return;
            }
            self.reading = true;
            let (conn, user) = (self.conn, self.user.clone());
            let (store, plugins, inbox) =
                (env.store.clone(), env.plugins.clone(), env.inbox.clone());
            tokio::spawn(async move {
                let page = read_page(&*store, &plugins, &user, &group, after, limit).await;
                inbox.send(PushCommand::CaughtUp { conn, group, page });
            });
            return;
        }
    }

    /// A catch-up page arrived: push it, as far as the window allows.
    pub(super) fn on_caught_up(
        &mut self,
        group: &str,
        page: Result<CatchUpPage, RequestError>,
        env: &Env,
        now: Instant,
    ) {
        self.reading = false;
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(user = %self.user, %group, %error, "catch-up from the log failed; retrying");
                self.delivery.mark_behind(group);
                self.retry_catch_up_at = Some(now + STORE_RETRY);
                return;
            }
        };
        self.confirm(group);
        let (mut pushed, mut whole) = (0, true);
        for push in &page.pushes {
            match self.delivery.offer(push, true, now) {
                Offer::Send => {
                    pushed += 1;
                    self.out.push(push.bytes.clone());
                }
                // Pushed live while the page was read.
                Offer::Duplicate => {}
                // Behind again (the window filled), left, or in the background.
                _ => {
                    whole = false;
                    break;
                }
            }
        }
        env.metrics.pushes.inc_by(pushed);
        if page.full && whole {
            // The log may hold more: read on.
            self.delivery.mark_behind(group);
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
    fn report_activity(&mut self, now: Instant, env: &Env) {
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
            env.metrics.activity.inc_by(groups.len() as u64);
            self.activity_sent_at = Some(now);
        }
    }

    /// Writes what is ready to the push stream, starts a catch-up the window has room
    /// for, and returns when this connection next has something due.
    pub(super) fn settle(
        &mut self,
        env: &Env,
        now: Instant,
        streams: &mut Streams<'_>,
    ) -> Option<Instant> {
        if !self.behind.is_empty() || self.delivery.has_behind() {
            self.catch_up(env, now);
        }
        if self.activity_at.is_some_and(|at| at <= now) {
            self.report_activity(now, env);
        }
        if !self.unread.is_empty()
            && (!self.out.is_empty() || self.release_unread_at.is_some_and(|at| at <= now))
        {
            self.out.append(&mut self.unread);
            self.release_unread_at = None;
        }
        for frame in self.out.drain(..) {
            streams.write_push(self.conn, frame);
        }
        [
            self.delivery.next_deadline(),
            self.retry_catch_up_at,
            self.release_unread_at,
            self.activity_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Reads one page of `group`'s log after `after`, as `user` may see it, encoded once.
async fn read_page(
    store: &dyn Store,
    plugins: &Plugins,
    user: &str,
    group: &str,
    after: u64,
    limit: usize,
) -> Result<CatchUpPage, RequestError> {
    let range = SeqRange {
        after,
        before: u64::MAX,
    };
    let page = store
        .messages(group, range, PageFrom::Oldest, limit)
        .await?;
    let full = page.len() == limit;
    let hidden = plugins.hidden(user, group, &page).await?;
    let (name, now): (Arc<str>, _) = (group.into(), Instant::now());
    let pushes = page
        .into_iter()
        .map(|message| {
            Arc::new(Push {
                group: name.clone(),
                seq: message.seq,
                bytes: encode_push(&render(user, message, &hidden, Message::FLAG_CATCH_UP)),
                received: now,
            })
        })
        .collect();
    Ok(CatchUpPage { pushes, full })
}
