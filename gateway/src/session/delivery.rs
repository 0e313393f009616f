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

/// An encoded push on its way to connections: one allocation per message, shared by every
/// live recipient (and kept by each until acknowledged, for retransmits).
#[derive(Debug)]
pub struct Push {
    pub group: Arc<str>,
    pub seq: u64,
    pub bytes: Bytes,
    /// When this gateway got it from the bus (or read it from the log).
    pub received: Instant,
}

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
    /// The group's id, for the cursors an ACK advances.
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

/// Consecutive pushes written together (one clock reading).
#[derive(Debug, Clone, Copy)]
struct Flight {
    /// Seq of its first push; the others follow without a gap.
    first: u64,
    /// Position of its first push in [`Unacked`]'s slots, counted from the very first.
    start: u64,
    /// When they were last written.
    sent_at: Instant,
    /// Written more than once: their ACK says nothing about how long ACKs take.
    resent: bool,
    catch_up: bool,
}

/// The written but unacknowledged pushes of one group, in seq order. Per push it keeps one
/// pointer to the shared [`Push`] (`None` once acknowledged, until it reaches the front);
/// seqs and times live in [`Flight`]s, one per write of consecutive pushes (a skip starts a
/// new one). Pushes are written in seq order, so this is a queue, not a tree: no allocation
/// per push once it has grown to the group's usual flight, and an ACK is a lookup and a walk.
#[derive(Debug, Default)]
struct Unacked {
    /// Front one never acknowledged.
    slots: VecDeque<Option<Arc<Push>>>,
    /// Slots popped from the front so far: the position of `slots[0]`.
    popped: u64,
    /// In seq order; the first may start before `popped`.
    flights: VecDeque<Flight>,
    /// Slots not acknowledged.
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

    /// Position one past the last slot.
    fn end(&self) -> u64 {
        self.popped + self.slots.len() as u64
    }

    /// Where flight `i`'s slots end.
    fn flight_end(&self, i: usize) -> u64 {
        self.flights.get(i + 1).map_or(self.end(), |f| f.start)
    }

    /// Oldest unacknowledged seq.
    fn first(&self) -> Option<u64> {
        // No flights exactly when no slots: emptied together, and a push starts one.
        let flight = self.flights.front()?;
        Some(flight.first + (self.popped - flight.start))
    }

    /// Adds `push`, above every seq already in; returns the flight it started, if new.
    fn push(&mut self, push: Arc<Push>, sent_at: Instant, catch_up: bool) -> Option<Flight> {
        let (seq, start) = (push.seq, self.end());
        self.slots.push_back(Some(push));
        self.len += 1;
        let joins = self.flights.back().is_some_and(|f| {
            f.sent_at == sent_at
                && f.catch_up == catch_up
                && !f.resent
                && f.first + (start - f.start) == seq
        });
        if joins {
            return None;
        }
        let flight = Flight {
            first: seq,
            start,
            sent_at,
            resent: false,
            catch_up,
        };
        self.flights.push_back(flight);
        Some(flight)
    }

    /// Acknowledges the pushes `first..=last`; returns how many were outstanding and when
    /// the oldest of them was written (unless it was written twice).
    fn ack(&mut self, first: u64, last: u64) -> (usize, Option<Instant>) {
        let mut removed = 0;
        let mut oldest = None;
        // The flights that may hold some of the range: from the one holding `first`.
        let from = self
            .flights
            .partition_point(|f| f.first <= first)
            .saturating_sub(1);
        for i in from..self.flights.len() {
            let flight = self.flights[i];
            if flight.first > last {
                break;
            }
            let seqs = flight.first..flight.first + (self.flight_end(i) - flight.start);
            let (lo, hi) = (first.max(seqs.start), last.min(seqs.end.saturating_sub(1)));
            for seq in lo..=hi {
                let position = flight.start + (seq - flight.first);
                let Some(slot) = position
                    .checked_sub(self.popped)
                    .and_then(|i| self.slots.get_mut(i as usize))
                else {
                    continue;
                };
                if slot.take().is_some() {
                    if removed == 0 && !flight.resent {
                        oldest = Some(flight.sent_at);
                    }
                    removed += 1;
                }
            }
        }
        self.len -= removed;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.popped += 1;
        }
        while self.flights.get(1).is_some_and(|f| f.start <= self.popped) {
            self.flights.pop_front();
        }
        if self.slots.is_empty() {
            self.flights.clear();
            if self.slots.capacity() > UNACKED_KEPT {
                self.slots.shrink_to(UNACKED_KEPT);
            }
        }
        (removed, oldest)
    }

    /// When the first flight is due. It may be early: a flight whose pushes were all
    /// acknowledged counts too.
    fn earliest(&self, due_at: impl Fn(&Flight) -> Instant) -> Option<Instant> {
        self.flights.iter().map(due_at).min()
    }

    /// The unacknowledged pushes of every flight due by `now`, written again now.
    fn retransmit(
        &mut self,
        now: Instant,
        due_at: impl Fn(&Flight) -> Instant,
        due: &mut Vec<Bytes>,
    ) {
        for i in 0..self.flights.len() {
            if due_at(&self.flights[i]) > now {
                continue;
            }
            let start = self.flights[i].start.max(self.popped) - self.popped;
            let end = self.flight_end(i) - self.popped;
            let slots = self.slots.range(start as usize..end as usize);
            due.extend(slots.flatten().map(|p| p.bytes.clone()));
            let flight = &mut self.flights[i];
            (flight.sent_at, flight.resent) = (now, true);
        }
    }
}

/// Index of live and of catch-up pushes in `Delivery::timeouts`.
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
    /// The next deadline as last computed, until something may have made it later (an
    /// ACK, a retransmit round): the pusher asks after every write, and most writes change
    /// nothing (a new flight can only bring it forward, which is applied at once).
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

    /// Offers `push`, live or read from the log (`catch_up`), written at `now`.
    pub fn offer(&mut self, push: &Arc<Push>, catch_up: bool, now: Instant) -> Offer {
        let Some(state) = self.groups.get_mut(&*push.group) else {
            return Offer::NotMember;
        };
        let seq = push.seq;
        if seq <= state.sent {
            return Offer::Duplicate;
        }
        if state.background {
            return Offer::Background;
        }
        if seq != state.sent + 1 || self.in_flight >= self.window {
            self.behind.insert(push.group.to_string());
            return Offer::Behind;
        }
        state.sent = seq;
        self.in_flight += 1;
        let flight = state.pending.push(push.clone(), now, catch_up);
        // A new flight comes due after the others, unless its timeout is shorter.
        if let (Some(flight), Some(deadline)) = (flight, self.deadline) {
            let at = self.flight_due()(&flight);
            if deadline.is_none_or(|d| at < d) {
                self.deadline = Some(Some(at));
            }
        }
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
            let (removed, sent_at) = state.pending.ack(range.first, range.last);
            self.in_flight -= removed;
            if let Some(sent_at) = sent_at {
                oldest_sent = Some(oldest_sent.map_or(sent_at, |o| o.min(sent_at)));
            }
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
    /// nothing for as long, to write again now.
    pub fn due_retransmits(&mut self, now: Instant) -> Vec<Bytes> {
        let mut due = Vec::new();
        let due_at = self.flight_due();
        for state in self.groups.values_mut().filter(|g| !g.pending.is_empty()) {
            state.pending.retransmit(now, &due_at, &mut due);
        }
        if !due.is_empty() {
            self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
        }
        self.deadline = None;
        due
    }

    /// When to call [`Self::due_retransmits`] next. It may be early (see
    /// [`Unacked::earliest`]).
    pub fn next_deadline(&mut self) -> Option<Instant> {
        if let Some(deadline) = self.deadline {
            return deadline;
        }
        let due_at = self.flight_due();
        let deadline = self
            .groups
            .values()
            .filter_map(|g| g.pending.earliest(&due_at))
            .min();
        self.deadline = Some(deadline);
        deadline
    }

    /// When a flight is due: a timeout after it was written and after the client's last
    /// progress.
    fn flight_due(&self) -> impl Fn(&Flight) -> Instant + use<> {
        let (live, catch_up) = (self.timeout(LIVE), self.timeout(CATCH_UP));
        let progress_at = self.progress_at;
        move |flight| {
            let timeout = if flight.catch_up { catch_up } else { live };
            let due = flight.sent_at + timeout;
            progress_at.map_or(due, |at| due.max(at + timeout))
        }
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

    fn bytes(tag: u64) -> Bytes {
        Bytes::from(format!("push {tag}"))
    }

    /// The push of (`group`, `seq`), its bytes `bytes(tag)`.
    fn push(group: &str, seq: u64, tag: u64) -> Arc<Push> {
        Arc::new(Push {
            group: group.into(),
            seq,
            bytes: bytes(tag),
            received: Instant::now(),
        })
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
        assert_eq!(d.offer(&push("g", 1, 1), false, now), Offer::Send);
        assert_eq!(d.offer(&push("g", 2, 2), false, now), Offer::Send);
        assert_eq!(d.offer(&push("g", 2, 2), false, now), Offer::Duplicate);
        assert_eq!(d.offer(&push("other", 1, 1), false, now), Offer::NotMember);
        assert_eq!(d.in_flight(), 2);
    }

    #[test]
    fn a_background_group_gets_no_pushes_and_is_caught_up_when_foreground_again() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join_current("g", 0);
        assert_eq!(d.offer(&push("g", 1, 1), false, now), Offer::Send);
        d.set_background("g", true);
        assert!(d.is_background("g"));
        assert_eq!(d.offer(&push("g", 2, 2), false, now), Offer::Background);
        assert_eq!(d.offer(&push("g", 2, 2), true, now), Offer::Background);
        // Neither a resync nor a gap reads the log for it while it is in the background.
        d.resync_all();
        d.mark_behind("g");
        assert!(d.take_behind().is_empty());
        // What was in flight is still retransmitted and acknowledged.
        assert_eq!(
            d.due_retransmits(now + Duration::from_secs(2)),
            vec![bytes(1)]
        );
        assert_eq!(d.ack(&[ack("g", 1, 1)], now), vec![("g".into(), 1)]);
        // Foreground: the log catches up after the last push sent.
        d.set_background("g", false);
        assert_eq!(d.take_behind(), vec!["g".to_string()]);
        assert_eq!(d.sent("g"), Some(1));
        assert_eq!(d.offer(&push("g", 2, 2), true, now), Offer::Send);
    }

    #[test]
    fn a_group_joined_at_its_head_needs_no_catch_up_until_a_gap() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join_current("quiet", 9);
        d.join("news", 3);
        assert_eq!(d.take_behind(), vec!["news".to_string()]);
        assert_eq!(d.offer(&push("quiet", 10, 10), false, now), Offer::Send);
        // A message that slipped in before the live one: caught up from the log.
        assert_eq!(d.offer(&push("quiet", 12, 12), false, now), Offer::Behind);
        assert_eq!(d.take_behind(), vec!["quiet".to_string()]);
    }

    #[test]
    fn a_gap_marks_the_group_behind_instead_of_sending_out_of_order() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join("g", 4);
        d.take_behind();
        assert_eq!(
            d.offer(&push("g", 4, 4), false, now),
            Offer::Duplicate,
            "at the watermark"
        );
        assert_eq!(d.offer(&push("g", 7, 7), false, now), Offer::Behind);
        assert_eq!(d.take_behind(), vec!["g".to_string()]);
        assert_eq!(d.sent("g"), Some(4));
    }

    #[test]
    fn acks_advance_the_cursor_only_over_a_contiguous_prefix() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join("g", 0);
        for seq in 1..=5 {
            d.offer(&push("g", seq, seq), false, now);
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
            d.offer(&push("g", seq, seq), false, now);
        }
        assert_eq!(d.skip_to("g", 10), None, "pushes 1..=3 are still in flight");
        for seq in 11..=12 {
            assert_eq!(d.offer(&push("g", seq, seq), false, now), Offer::Send);
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
        d.offer(&push("g", 1, 1), true, t0);
        assert_eq!(d.next_deadline(), Some(ms(3000)));
        d.offer(&push("g", 2, 2), true, ms(50));
        assert_eq!(
            d.next_deadline(),
            Some(ms(3000)),
            "the front is still due first"
        );
        d.offer(&push("h", 1, 1), false, ms(100));
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
        d.offer(&push("g", 1, 1), false, t0);
        d.offer(&push("g", 2, 2), false, t0);
        assert!(
            d.due_retransmits(t0 + Duration::from_millis(999))
                .is_empty()
        );
        d.ack(&[ack("g", 1, 1)], t0);
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(d.due_retransmits(t1), vec![bytes(2)]);
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
        d.offer(&push("g", 1, 1), false, t0);
        d.offer(&push("g", 2, 2), false, t0);
        d.ack(&[ack("g", 1, 1)], ms(10));
        // Reading slowly: 2 waits behind what it acknowledges (3, sent later).
        d.offer(&push("g", 3, 3), false, ms(800));
        d.ack(&[ack("g", 3, 3)], ms(810));
        assert!(
            d.due_retransmits(ms(1500)).is_empty(),
            "it is making progress"
        );
        assert_eq!(d.next_deadline(), Some(ms(1810)));
        // Quiet for a whole timeout: what is left is sent again.
        assert_eq!(d.due_retransmits(ms(1810)), vec![bytes(2)]);
        // An ACK that acknowledges nothing new is not progress (and the timeout doubled).
        d.ack(&[ack("g", 1, 1)], ms(2000));
        assert!(d.due_retransmits(ms(3809)).is_empty());
        assert_eq!(d.due_retransmits(ms(3810)), vec![bytes(2)]);
    }

    #[test]
    fn slow_acks_stretch_the_retransmit_timeout() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut d = Delivery::new(POLICY, CATCH_UP, 100);
        d.join("g", 0);
        d.offer(&push("g", 1, 1), false, t0);
        // ACKs take 3 s here (a busy gateway, a slow path): 3 s + 4 × 1.5 s.
        d.ack(&[ack("g", 1, 1)], ms(3000));
        d.offer(&push("g", 2, 2), false, ms(3000));
        assert!(d.due_retransmits(ms(11_999)).is_empty());
        assert_eq!(d.due_retransmits(ms(12_000)), vec![bytes(2)]);
        // The ACK of a push written twice is no measure (Karn): the estimate stays.
        d.ack(&[ack("g", 2, 2)], ms(20_000));
        d.offer(&push("g", 3, 3), false, ms(20_000));
        assert_eq!(d.next_deadline(), Some(ms(29_000)));
    }

    #[test]
    fn a_full_window_pauses_live_delivery_and_acks_resume_it() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 2);
        d.join("g", 0);
        d.take_behind();
        assert_eq!(d.offer(&push("g", 1, 1), false, now), Offer::Send);
        assert_eq!(d.offer(&push("g", 2, 2), false, now), Offer::Send);
        assert_eq!(d.offer(&push("g", 3, 3), false, now), Offer::Behind);
        assert!(d.take_behind().is_empty(), "no room yet");
        d.ack(&[ack("g", 1, 2)], now);
        assert_eq!(d.take_behind(), vec!["g".to_string()]);
        assert_eq!(d.offer(&push("g", 3, 3), false, now), Offer::Send);
    }

    #[test]
    fn leaving_a_group_forgets_its_pending_pushes() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 10);
        d.join("g", 0);
        d.offer(&push("g", 1, 1), false, now);
        d.leave("g");
        assert_eq!(d.in_flight(), 0);
        assert!(d.due_retransmits(now + Duration::from_secs(2)).is_empty());
        assert_eq!(d.offer(&push("g", 2, 2), false, now), Offer::NotMember);
    }

    #[test]
    fn catch_up_pushes_wait_for_their_own_longer_timeout() {
        let t0 = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 10);
        d.join("old", 0);
        d.join("new", 0);
        d.offer(&push("old", 1, 1), true, t0);
        d.offer(&push("new", 1, 101), false, t0);
        assert_eq!(
            d.due_retransmits(t0 + Duration::from_millis(1000)),
            vec![bytes(101)]
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
            vec![bytes(1)]
        );
    }

    #[test]
    fn a_skip_far_ahead_while_pushes_are_in_flight_costs_nothing_per_skipped_seq() {
        let now = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 10);
        d.join("g", 0);
        d.offer(&push("g", 1, 1), false, now);
        let far = 1_000_000_000_000;
        assert_eq!(d.skip_to("g", far), None);
        assert_eq!(d.offer(&push("g", far + 1, 2), false, now), Offer::Send);
        assert_eq!(
            d.ack(&[ack("g", 1, u64::MAX)], now),
            vec![("g".into(), far + 1)]
        );
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn only_the_unacknowledged_pushes_of_a_write_are_sent_again() {
        let t0 = Instant::now();
        let mut d = Delivery::new(POLICY, CATCH_UP, 10);
        d.join("g", 0);
        for seq in 1..=4 {
            d.offer(&push("g", seq, seq), false, t0);
        }
        d.offer(&push("g", 5, 5), false, t0 + Duration::from_millis(500));
        d.ack(&[ack("g", 2, 3)], t0);
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(d.due_retransmits(t1), vec![bytes(1), bytes(4)]);
        assert_eq!(
            d.due_retransmits(t0 + Duration::from_millis(1500)),
            Vec::<Bytes>::new(),
            "the later write waits for the doubled timeout too"
        );
        assert_eq!(
            d.due_retransmits(t0 + Duration::from_millis(2500)),
            vec![bytes(5)]
        );
    }
}
