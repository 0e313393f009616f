//! Per-connection delivery state, sans-IO: which pushes went out, which are unacknowledged,
//! what to retransmit and when, and where the connection fell behind the log.
//!
//! The connection task feeds it live messages, ACKs and the clock; it answers what to
//! write. It never blocks and never reads the store: when a group falls behind (a gap in
//! the live stream, a full window, a dropped event) it says so, and the task catches that
//! group up from the log.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_protocol::{AckPolicy, AckRange};

/// What to do with an offered push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Write it now; it is tracked until acknowledged.
    Send,
    /// Already sent on this connection (or before the member's watermark): drop it.
    Duplicate,
    /// Not sent: the group is now marked behind and will be caught up from the log.
    Behind,
    /// The connection is not in this group (any more).
    NotMember,
    /// The app has the group in the background: nothing is pushed until it is foreground
    /// again, and then the log catches it up.
    Background,
}

#[derive(Debug)]
struct GroupState {
    /// The group's id, shared by its retransmit entries (no allocation per push).
    name: Arc<str>,
    /// Highest seq written to the connection (or the start point, before any).
    sent: u64,
    /// Highest seq such that it and everything before it is acknowledged.
    acked: u64,
    /// Written but not acknowledged, by seq.
    pending: Unacked,
    /// The app does not show it (`Focus`): no pushes, live or caught up.
    background: bool,
}

#[derive(Debug)]
struct Pending {
    bytes: Bytes,
    /// When it was last written.
    sent_at: Instant,
    /// Written more than once: its ACK says nothing about how long ACKs take.
    resent: bool,
}

/// The written but unacknowledged pushes of one group, in seq order: written ones are
/// appended, acknowledged ones cleared in place and dropped once at the front. Pushes are
/// written in seq order, so this is a queue, not a tree: no allocation per push once it
/// has grown to the group's usual flight, and an ACK is a lookup and a walk.
#[derive(Debug, Default)]
struct Unacked {
    /// (seq, the push unless acknowledged); the front one is never acknowledged.
    entries: VecDeque<(u64, Option<Pending>)>,
    /// Entries not acknowledged.
    len: usize,
}

/// Capacity an emptied `Unacked` keeps (more is given back, e.g. after a burst).
const UNACKED_KEPT: usize = 256;

impl Unacked {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Oldest unacknowledged seq.
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(seq, _)| *seq)
    }

    /// Adds `seq`, above every seq already in.
    fn push(&mut self, seq: u64, pending: Pending) {
        debug_assert!(self.entries.back().is_none_or(|(last, _)| *last < seq));
        self.entries.push_back((seq, Some(pending)));
        self.len += 1;
    }

    /// Where `seq` is, or would be. Seqs are contiguous unless a skip left a gap, so the
    /// offset from the front is nearly always right; a search when it is not.
    fn index(&self, seq: u64) -> usize {
        let Some(&(front, _)) = self.entries.front() else {
            return 0;
        };
        if seq <= front {
            return 0;
        }
        let guess = (seq - front) as usize;
        match self.entries.get(guess) {
            Some((at, _)) if *at == seq => guess,
            _ => self.entries.partition_point(|(s, _)| *s < seq),
        }
    }

    fn position(&self, seq: u64) -> Option<usize> {
        let i = self.index(seq);
        (self.entries.get(i)?.0 == seq).then_some(i)
    }

    fn get(&self, seq: u64) -> Option<&Pending> {
        self.entries[self.position(seq)?].1.as_ref()
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Pending> {
        let i = self.position(seq)?;
        self.entries[i].1.as_mut()
    }

    /// Removes the pushes `first..=last`, handing each to `acked`; returns how many.
    fn ack(&mut self, first: u64, last: u64, mut acked: impl FnMut(Pending)) -> usize {
        let start = self.index(first);
        let mut removed = 0;
        for (_, slot) in self
            .entries
            .range_mut(start..)
            .take_while(|(s, _)| *s <= last)
        {
            if let Some(pending) = slot.take() {
                acked(pending);
                removed += 1;
            }
        }
        self.len -= removed;
        while matches!(self.entries.front(), Some((_, None))) {
            self.entries.pop_front();
        }
        if self.entries.is_empty() && self.entries.capacity() > UNACKED_KEPT {
            self.entries.shrink_to(UNACKED_KEPT);
        }
        removed
    }
}

/// A push in flight: (last written at, seq, group).
type InFlight = (Instant, u64, Arc<str>);

/// Index of live and of catch-up pushes in `Delivery::timeouts` and `Delivery::written`.
const LIVE: usize = 0;
const CATCH_UP: usize = 1;
/// Most doublings of the retransmit timeout (64 × `retransmit_ms`).
const MAX_BACKOFF: u32 = 6;

/// The delivery state machine of one connection.
#[derive(Debug)]
pub struct Delivery {
    /// Retransmit timeouts of live and of catch-up pushes.
    timeouts: [Duration; 2],
    /// Most pushes in flight before live delivery pauses and the log takes over.
    window: usize,
    /// Looked up on every push and ACK: foldhash, not SipHash (the keys are this user's
    /// own groups, so there is no one to flood it).
    groups: HashMap<String, GroupState, foldhash::fast::RandomState>,
    /// Pushes in flight of each kind in the order they were written (one timeout per kind,
    /// so the front is always due first). An entry whose push was acknowledged (or written
    /// again) is stale and dropped when it reaches the front.
    written: [VecDeque<InFlight>; 2],
    /// When an ACK last acknowledged something. A client that acknowledged within a
    /// retransmit timeout is reading, if slowly (on a reliable stream, what it has not
    /// acknowledged is queued behind what it has): a copy would only queue behind the
    /// original, so retransmits wait until it goes quiet.
    progress_at: Option<Instant>,
    /// How long ACKs take on this connection (smoothed, and its variation), as TCP
    /// estimates its round trip: when the gateway or the path is the slow part, the timeout
    /// grows with it instead of adding copies to the queue that delays them.
    ack_time: Option<(Duration, Duration)>,
    /// Retransmit rounds since the client last made progress: each doubles the timeout
    /// (TCP's back-off), so a connection whose pushes are stuck behind a queue gets a few
    /// copies, not one per timeout.
    backoff: u32,
    in_flight: usize,
    /// The next deadline as last computed, until something may have made it sooner (a
    /// first push in an empty queue, an ACK changing the timeout, a retransmit round):
    /// the pusher asks after every write, and most writes change nothing.
    deadline: Option<Option<Instant>>,
    /// Foreground groups to catch up from the log (a background group never is).
    behind: BTreeSet<String>,
}

impl Delivery {
    /// `live` and `catch_up` are the ACK policies announced to the client.
    pub fn new(live: AckPolicy, catch_up: AckPolicy, window: usize) -> Self {
        Self {
            timeouts: [live, catch_up].map(|p| Duration::from_millis(p.retransmit_ms.into())),
            window: window.max(1),
            groups: HashMap::default(),
            written: Default::default(),
            progress_at: None,
            ack_time: None,
            backoff: 0,
            in_flight: 0,
            deadline: None,
            behind: BTreeSet::new(),
        }
    }

    /// Starts delivering `group`, everything after `after` (a cursor or join watermark).
    /// The group is marked behind so the task catches it up from the log.
    pub fn join(&mut self, group: &str, after: u64) {
        self.groups
            .entry(group.to_owned())
            .or_insert_with(|| GroupState {
                name: group.into(),
                sent: after,
                acked: after,
                pending: Unacked::default(),
                background: false,
            });
        self.mark_behind(group);
    }

    /// Starts delivering `group` after `after`, known to be its head: nothing to catch up
    /// (a later gap still marks it behind).
    pub fn join_current(&mut self, group: &str, after: u64) {
        self.join(group, after);
        self.behind.remove(group);
    }

    /// Stops delivering `group`: nothing more is sent or retransmitted.
    pub fn leave(&mut self, group: &str) {
        if let Some(state) = self.groups.remove(group) {
            self.in_flight -= state.pending.len();
        }
        self.behind.remove(group);
    }

    /// Marks `group` behind (if the connection is still in it and it is in the
    /// foreground), to catch up later.
    pub fn mark_behind(&mut self, group: &str) {
        if self.groups.get(group).is_some_and(|g| !g.background) {
            self.behind.insert(group.to_owned());
        }
    }

    /// Marks every foreground group behind, e.g. after live events were dropped for this
    /// connection.
    pub fn resync_all(&mut self) {
        let foreground = self.groups.iter().filter(|(_, g)| !g.background);
        self.behind.extend(foreground.map(|(name, _)| name.clone()));
    }

    /// Moves `group` to the background (no more pushes; those in flight stay tracked) or
    /// back to the foreground, where the log catches it up.
    pub fn set_background(&mut self, group: &str, background: bool) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        state.background = background;
        if background {
            self.behind.remove(group);
        } else {
            self.behind.insert(group.to_owned());
        }
    }

    /// Moves past `seq` in `group` without sending (the client was told it was skipped).
    /// Returns the new acknowledged prefix when nothing before it is in flight.
    pub fn skip_to(&mut self, group: &str, seq: u64) -> Option<u64> {
        let state = self.groups.get_mut(group)?;
        if seq <= state.sent {
            return None;
        }
        state.sent = seq;
        if !state.pending.is_empty() {
            return None;
        }
        state.acked = seq;
        Some(seq)
    }

    /// Whether the connection is in `group` and has it in the background.
    pub fn is_background(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|g| g.background)
    }

    /// Highest seq sent in `group`, if the connection is in it.
    pub fn sent(&self, group: &str) -> Option<u64> {
        self.groups.get(group).map(|g| g.sent)
    }

    /// Highest seq such that it and everything before it is acknowledged, if the
    /// connection is in `group`.
    pub fn acked(&self, group: &str) -> Option<u64> {
        self.groups.get(group).map(|g| g.acked)
    }

    /// How many more pushes fit in the window.
    pub fn room(&self) -> usize {
        self.window.saturating_sub(self.in_flight)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Offers the push `bytes` of (`group`, `seq`), live or read from the log (`catch_up`).
    pub fn offer(
        &mut self,
        group: &str,
        seq: u64,
        bytes: &Bytes,
        catch_up: bool,
        now: Instant,
    ) -> Offer {
        let Some(state) = self.groups.get_mut(group) else {
            return Offer::NotMember;
        };
        if seq <= state.sent {
            return Offer::Duplicate;
        }
        if state.background {
            return Offer::Background;
        }
        if seq != state.sent + 1 || self.in_flight >= self.window {
            self.behind.insert(group.to_owned());
            return Offer::Behind;
        }
        let kind = if catch_up { CATCH_UP } else { LIVE };
        state.sent = seq;
        let pending = Pending {
            bytes: bytes.clone(),
            sent_at: now,
            resent: false,
        };
        state.pending.push(seq, pending);
        self.in_flight += 1;
        if self.written[kind].is_empty() {
            self.deadline = None;
        }
        self.written[kind].push_back((now, seq, state.name.clone()));
        Offer::Send
    }

    /// Whether some group waits to be caught up from the log.
    pub fn has_behind(&self) -> bool {
        !self.behind.is_empty()
    }

    /// Groups to catch up from the log, if the window has room for them. Each is taken
    /// out of the behind set; offering it a push that does not fit puts it back.
    pub fn take_behind(&mut self) -> Vec<String> {
        if self.room() == 0 {
            return Vec::new();
        }
        std::mem::take(&mut self.behind).into_iter().collect()
    }

    /// Applies ACK ranges received at `now`; returns the groups whose acknowledged prefix
    /// advanced, with the new cursor, for the store.
    pub fn ack(&mut self, ranges: &[AckRange], now: Instant) -> Vec<(Arc<str>, u64)> {
        let mut advanced = Vec::new();
        let in_flight = self.in_flight;
        let mut oldest_sent: Option<Instant> = None;
        for range in ranges {
            if range.first > range.last {
                continue;
            }
            let Some(state) = self.groups.get_mut(&range.group) else {
                continue;
            };
            self.in_flight -= state.pending.ack(range.first, range.last, |pending| {
                if !pending.resent {
                    oldest_sent =
                        Some(oldest_sent.map_or(pending.sent_at, |o| o.min(pending.sent_at)));
                }
            });
            let prefix = state.pending.first().map_or(state.sent, |first| first - 1);
            if prefix > state.acked {
                state.acked = prefix;
                match advanced
                    .iter_mut()
                    .find(|(g, _): &&mut (Arc<str>, u64)| **g == *range.group)
                {
                    Some(entry) => entry.1 = prefix,
                    None => advanced.push((state.name.clone(), prefix)),
                }
            }
        }
        // One sample per ACK frame, as TCP takes one per ACK: how long its oldest push
        // waited, which is what the retransmit timeout must cover.
        if let Some(sent_at) = oldest_sent {
            self.ack_time = Some(smooth(self.ack_time, now - sent_at));
        }
        if self.in_flight < in_flight {
            self.progress_at = Some(now);
            self.backoff = 0;
            self.deadline = None;
        }
        advanced
    }

    /// Pushes unacknowledged past the retransmit timeout while the client acknowledged
    /// nothing for as long, to write again now, soonest deadline first.
    pub fn due_retransmits(&mut self, now: Instant) -> Vec<Bytes> {
        let mut due = Vec::new();
        while let Some(kind) = self.soonest().filter(|&k| self.due_at(k) <= now) {
            let (_, seq, group) = self.written[kind].pop_front().expect("soonest");
            let pending = self
                .groups
                .get_mut(&*group)
                .and_then(|g| g.pending.get_mut(seq))
                .expect("soonest skips stale entries");
            (pending.sent_at, pending.resent) = (now, true);
            due.push(pending.bytes.clone());
            self.written[kind].push_back((now, seq, group));
        }
        if !due.is_empty() {
            self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
        }
        self.deadline = None;
        due
    }

    /// When to call [`Self::due_retransmits`] next. It may be early: acknowledged pushes
    /// leave the queues only there, so that an ACK costs no queue work.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        if let Some(deadline) = self.deadline {
            return deadline;
        }
        let deadline = (0..self.written.len())
            .filter(|&kind| !self.written[kind].is_empty())
            .map(|kind| self.due_at(kind))
            .min();
        self.deadline = Some(deadline);
        deadline
    }

    /// When the front of a (non-empty) queue is due: a timeout after it was written and
    /// after the client's last progress.
    fn due_at(&self, kind: usize) -> Instant {
        let timeout = self.timeout(kind);
        let written = self.written[kind][0].0 + timeout;
        self.progress_at
            .map_or(written, |at| written.max(at + timeout))
    }

    /// The policy's timeout, or longer when ACKs on this connection take longer
    /// (smoothed time + 4 × its variation, as TCP's retransmit timeout), doubled for each
    /// retransmit round without progress.
    fn timeout(&self, kind: usize) -> Duration {
        let measured = self
            .ack_time
            .map_or(Duration::ZERO, |(smoothed, variation)| {
                smoothed + 4 * variation
            });
        self.timeouts[kind].max(measured) * (1 << self.backoff)
    }

    /// The queue whose front deadline is soonest, after dropping stale fronts.
    fn soonest(&mut self) -> Option<usize> {
        for queue in &mut self.written {
            while let Some((sent_at, seq, group)) = queue.front() {
                let live = self
                    .groups
                    .get(&**group)
                    .and_then(|g| g.pending.get(*seq))
                    .is_some_and(|p| p.sent_at == *sent_at);
                if live {
                    break;
                }
                queue.pop_front();
            }
        }
        (0..self.written.len())
            .filter(|&k| !self.written[k].is_empty())
            .min_by_key(|&k| self.due_at(k))
    }
}

/// One ACK time sample folded into the estimate (RFC 6298's gains: 1/8 and 1/4).
fn smooth(estimate: Option<(Duration, Duration)>, sample: Duration) -> (Duration, Duration) {
    match estimate {
        None => (sample, sample / 2),
        Some((smoothed, variation)) => {
            let deviation = smoothed.abs_diff(sample);
            (
                smoothed - smoothed / 8 + sample / 8,
                variation - variation / 4 + deviation / 4,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: AckPolicy = AckPolicy {
        max_delay_ms: 50,
        max_batch: 32,
        retransmit_ms: 1000,
    };
    const CATCH_UP: AckPolicy = AckPolicy {
        max_delay_ms: 200,
        max_batch: 256,
        retransmit_ms: 3000,
    };

    fn push(seq: u64) -> Bytes {
        Bytes::from(format!("push {seq}"))
    }

    fn ack(group: &str, first: u64, last: u64) -> AckRange {
        AckRange {
            group: group.into(),
            first,
            last,
        }
    }

    #[test]
    fn in_order_pushes_are_sent_and_repeats_dropped() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join("g", 0);
        assert_eq!(d.take_behind(), vec!["g".to_string()]);
        assert_eq!(d.offer("g", 1, &push(1), false, now), Offer::Send);
        assert_eq!(d.offer("g", 2, &push(2), false, now), Offer::Send);
        assert_eq!(d.offer("g", 2, &push(2), false, now), Offer::Duplicate);
        assert_eq!(d.offer("other", 1, &push(1), false, now), Offer::NotMember);
        assert_eq!(d.in_flight(), 2);
    }

    #[test]
    fn a_background_group_gets_no_pushes_and_is_caught_up_when_foreground_again() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join_current("g", 0);
        assert_eq!(d.offer("g", 1, &push(1), false, now), Offer::Send);
        d.set_background("g", true);
        assert!(d.is_background("g"));
        assert_eq!(d.offer("g", 2, &push(2), false, now), Offer::Background);
        assert_eq!(d.offer("g", 2, &push(2), true, now), Offer::Background);
        // Neither a resync nor a gap reads the log for it while it is in the background.
        d.resync_all();
        d.mark_behind("g");
        assert!(d.take_behind().is_empty());
        // What was in flight is still retransmitted and acknowledged.
        assert_eq!(
            d.due_retransmits(now + Duration::from_secs(2)),
            vec![push(1)]
        );
        assert_eq!(d.ack(&[ack("g", 1, 1)], now), vec![("g".into(), 1)]);
        // Foreground: the log catches up after the last push sent.
        d.set_background("g", false);
        assert_eq!(d.take_behind(), vec!["g".to_string()]);
        assert_eq!(d.sent("g"), Some(1));
        assert_eq!(d.offer("g", 2, &push(2), true, now), Offer::Send);
    }

    #[test]
    fn a_group_joined_at_its_head_needs_no_catch_up_until_a_gap() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join_current("quiet", 9);
        d.join("news", 3);
        assert_eq!(d.take_behind(), vec!["news".to_string()]);
        assert_eq!(d.offer("quiet", 10, &push(10), false, now), Offer::Send);
        // A message that slipped in before the live one: caught up from the log.
        assert_eq!(d.offer("quiet", 12, &push(12), false, now), Offer::Behind);
        assert_eq!(d.take_behind(), vec!["quiet".to_string()]);
    }

    #[test]
    fn a_gap_marks_the_group_behind_instead_of_sending_out_of_order() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join("g", 4);
        d.take_behind();
        assert_eq!(
            d.offer("g", 4, &push(4), false, now),
            Offer::Duplicate,
            "at the watermark"
        );
        assert_eq!(d.offer("g", 7, &push(7), false, now), Offer::Behind);
        assert_eq!(d.take_behind(), vec!["g".to_string()]);
        assert_eq!(d.sent("g"), Some(4));
    }

    #[test]
    fn acks_advance_the_cursor_only_over_a_contiguous_prefix() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join("g", 0);
        for seq in 1..=5 {
            d.offer("g", seq, &push(seq), false, now);
        }
        assert_eq!(d.ack(&[ack("g", 3, 4)], now), vec![]);
        assert_eq!(d.ack(&[ack("g", 1, 1)], now), vec![("g".into(), 1)]);
        assert_eq!(
            d.ack(&[ack("g", 2, 2), ack("g", 5, 5)], now),
            vec![("g".into(), 5)]
        );
        assert_eq!(d.in_flight(), 0);
        assert_eq!(
            d.ack(&[ack("g", 9, 1), ack("nope", 1, 2)], now),
            vec![],
            "bad ranges are ignored"
        );
    }

    #[test]
    fn acks_over_a_skipped_range_and_repeated_acks_count_each_push_once() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join("g", 0);
        for seq in 1..=3 {
            d.offer("g", seq, &push(seq), false, now);
        }
        assert_eq!(d.skip_to("g", 10), None, "pushes 1..=3 are still in flight");
        for seq in 11..=12 {
            assert_eq!(d.offer("g", seq, &push(seq), false, now), Offer::Send);
        }
        assert_eq!(d.ack(&[ack("g", 2, 11)], now), vec![]);
        assert_eq!(d.in_flight(), 2);
        assert_eq!(d.ack(&[ack("g", 1, 12)], now), vec![("g".into(), 12)]);
        assert_eq!(d.ack(&[ack("g", 1, 12)], now), vec![]);
        assert_eq!(d.in_flight(), 0);
        assert!(d.due_retransmits(now + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_first_live_push_moves_the_deadline_before_a_later_catch_up_one() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join("g", 0);
        d.join("h", 0);
        d.offer("g", 1, &push(1), true, t0);
        assert_eq!(d.next_deadline(), Some(ms(3000)));
        d.offer("g", 2, &push(2), true, ms(50));
        assert_eq!(
            d.next_deadline(),
            Some(ms(3000)),
            "the front is still due first"
        );
        d.offer("h", 1, &push(1), false, ms(100));
        assert_eq!(
            d.next_deadline(),
            Some(ms(1100)),
            "the live queue's first push"
        );
        d.ack(&[ack("h", 1, 1)], ms(200));
        assert_eq!(d.due_retransmits(ms(1100)), Vec::<Bytes>::new());
        // A timeout after the catch-up push and after the client's last progress.
        assert_eq!(d.next_deadline(), Some(ms(3200)));
    }

    #[test]
    fn unacknowledged_pushes_are_retransmitted_after_the_timeout_until_acked() {
        let t0 = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join("g", 0);
        d.offer("g", 1, &push(1), false, t0);
        d.offer("g", 2, &push(2), false, t0);
        assert!(
            d.due_retransmits(t0 + Duration::from_millis(999))
                .is_empty()
        );
        d.ack(&[ack("g", 1, 1)], t0);
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(d.due_retransmits(t1), vec![push(2)]);
        // Still nothing: the next copy waits twice as long.
        assert_eq!(d.next_deadline(), Some(t1 + Duration::from_millis(2000)));
        d.ack(&[ack("g", 2, 2)], t1);
        assert!(d.due_retransmits(t1 + Duration::from_secs(5)).is_empty());
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn a_client_that_keeps_acknowledging_gets_no_copies_until_it_goes_quiet() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join("g", 0);
        d.offer("g", 1, &push(1), false, t0);
        d.offer("g", 2, &push(2), false, t0);
        d.ack(&[ack("g", 1, 1)], ms(10));
        // Reading slowly: 2 waits behind what it acknowledges (3, sent later).
        d.offer("g", 3, &push(3), false, ms(800));
        d.ack(&[ack("g", 3, 3)], ms(810));
        assert!(
            d.due_retransmits(ms(1500)).is_empty(),
            "it is making progress"
        );
        assert_eq!(d.next_deadline(), Some(ms(1810)));
        // Quiet for a whole timeout: what is left is sent again.
        assert_eq!(d.due_retransmits(ms(1810)), vec![push(2)]);
        // An ACK that acknowledges nothing new is not progress (and the timeout doubled).
        d.ack(&[ack("g", 1, 1)], ms(2000));
        assert!(d.due_retransmits(ms(3809)).is_empty());
        assert_eq!(d.due_retransmits(ms(3810)), vec![push(2)]);
    }

    #[test]
    fn slow_acks_stretch_the_retransmit_timeout() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join("g", 0);
        d.offer("g", 1, &push(1), false, t0);
        // ACKs take 3 s here (a busy gateway, a slow path): 3 s + 4 × 1.5 s.
        d.ack(&[ack("g", 1, 1)], ms(3000));
        d.offer("g", 2, &push(2), false, ms(3000));
        assert!(d.due_retransmits(ms(11_999)).is_empty());
        assert_eq!(d.due_retransmits(ms(12_000)), vec![push(2)]);
        // The ACK of a push written twice is no measure (Karn): the estimate stays.
        d.ack(&[ack("g", 2, 2)], ms(20_000));
        d.offer("g", 3, &push(3), false, ms(20_000));
        assert_eq!(d.next_deadline(), Some(ms(29_000)));
    }

    #[test]
    fn a_full_window_pauses_live_delivery_and_acks_resume_it() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 2);
        d.join("g", 0);
        d.take_behind();
        assert_eq!(d.offer("g", 1, &push(1), false, now), Offer::Send);
        assert_eq!(d.offer("g", 2, &push(2), false, now), Offer::Send);
        assert_eq!(d.offer("g", 3, &push(3), false, now), Offer::Behind);
        assert!(d.take_behind().is_empty(), "no room yet");
        d.ack(&[ack("g", 1, 2)], now);
        assert_eq!(d.take_behind(), vec!["g".to_string()]);
        assert_eq!(d.offer("g", 3, &push(3), false, now), Offer::Send);
    }

    #[test]
    fn leaving_a_group_forgets_its_pending_pushes() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 10);
        d.join("g", 0);
        d.offer("g", 1, &push(1), false, now);
        d.leave("g");
        assert_eq!(d.in_flight(), 0);
        assert!(d.due_retransmits(now + Duration::from_secs(2)).is_empty());
        assert_eq!(d.offer("g", 2, &push(2), false, now), Offer::NotMember);
    }

    #[test]
    fn catch_up_pushes_wait_for_their_own_longer_timeout() {
        let t0 = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 10);
        d.join("old", 0);
        d.join("new", 0);
        d.offer("old", 1, &push(1), true, t0);
        d.offer("new", 1, &push(101), false, t0);
        assert_eq!(
            d.due_retransmits(t0 + Duration::from_millis(1000)),
            vec![push(101)]
        );
        // The live copy is acknowledged; the catch-up push is due 3 s after that progress.
        d.ack(&[ack("new", 1, 1)], t0 + Duration::from_millis(1000));
        assert!(
            d.due_retransmits(t0 + Duration::from_millis(3999))
                .is_empty()
        );
        assert_eq!(d.next_deadline(), Some(t0 + Duration::from_millis(4000)));
        assert_eq!(
            d.due_retransmits(t0 + Duration::from_millis(4000)),
            vec![push(1)]
        );
    }
}
