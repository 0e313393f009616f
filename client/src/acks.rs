//! Delayed, batched acknowledgements, as the gateway's [`AckPolicy`]s ask.
//!
//! The Welcome announces two policies: one for live pushes and one for pushes flagged
//! [`Message::FLAG_CATCH_UP`] (read from the log to catch the connection up). Each push
//! taken by the application is acknowledged under its own policy, and all pending pushes
//! go out together in one ACK frame.
//!
//! A pending ACK goes out at the next tick of the connection's own [`AckClock`], not at a
//! fixed delay after the push: the members of a big group get each push at the same
//! moment, and a fixed delay would have them all acknowledge it at the same moment too.
//!
//! Pure state driven by explicit [`Instant`]s so the timing rules are unit-tested
//! without sockets or sleeps; a background task owns the clock.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::{Duration, Instant};

use chat_protocol::{AckPolicy, AckRange, Frame, Message};

/// Which of the Welcome's two policies a push is acknowledged under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckClass {
    Live,
    CatchUp,
}

impl AckClass {
    /// `CatchUp` for pushes flagged [`Message::FLAG_CATCH_UP`], else `Live`.
    pub(crate) fn of(message: &Message) -> Self {
        if message.flags & Message::FLAG_CATCH_UP != 0 {
            AckClass::CatchUp
        } else {
            AckClass::Live
        }
    }
}

/// When a connection's ACKs go: ticks one period (a policy's `max_delay_ms`) apart, at a
/// phase drawn per connection. Ten thousand members who got the same push at the same
/// moment then acknowledge it spread over the period instead of in one burst, which the
/// gateway would take between two fan-outs (docs/protocol.md §7, "The ACK clocks").
#[derive(Debug, Clone, Copy)]
pub struct AckClock {
    origin: Instant,
    period: Duration,
}

impl AckClock {
    /// Ticks every `period` from `start + phase × period`, `phase` in `[0, 1)`.
    pub fn new(start: Instant, period: Duration, phase: f64) -> Self {
        Self {
            origin: start + period.mul_f64(phase.clamp(0.0, 1.0)),
            period,
        }
    }

    /// The first tick after `t`: never more than one period later.
    pub fn next_after(&self, t: Instant) -> Instant {
        let Some(since) = t.checked_duration_since(self.origin) else {
            return self.origin.min(t + self.period);
        };
        let period = self.period.as_nanos();
        if period == 0 {
            return t;
        }
        let ticks = since.as_nanos() / period + 1;
        self.origin + Duration::from_nanos(u64::try_from(ticks * period).unwrap_or(u64::MAX))
    }
}

/// One policy's timing rules, plus when its oldest pending push was taken.
#[derive(Debug)]
struct Lane {
    clock: AckClock,
    max_batch: usize,
    /// When the earliest pending push under this policy was taken: its deadline is the soonest.
    oldest: Option<Instant>,
}

impl Lane {
    fn new(policy: AckPolicy, start: Instant, phase: f64) -> Self {
        let max_delay = Duration::from_millis(policy.max_delay_ms.into());
        Self {
            clock: AckClock::new(start, max_delay, phase),
            // A zero batch would never fire; treat it as "ack each push at once".
            max_batch: usize::from(policy.max_batch).max(1),
            oldest: None,
        }
    }

    fn note(&mut self, now: Instant) {
        self.oldest = Some(self.oldest.map_or(now, |t| t.min(now)));
    }

    fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| self.clock.next_after(t))
    }
}

/// Pushes taken by the application whose ACK has not been sent yet.
#[derive(Debug)]
pub(crate) struct AckBatcher {
    live: Lane,
    catch_up: Lane,
    /// Per group, each pending seq and the policy it is acknowledged under.
    pending: BTreeMap<String, BTreeMap<u64, AckClass>>,
    count: usize,
    live_count: usize,
}

impl AckBatcher {
    /// Both policies' clocks start at `start`, at the same `phase` (see [`AckClock`]).
    pub(crate) fn new(live: AckPolicy, catch_up: AckPolicy, start: Instant, phase: f64) -> Self {
        Self {
            live: Lane::new(live, start, phase),
            catch_up: Lane::new(catch_up, start, phase),
            pending: BTreeMap::new(),
            count: 0,
            live_count: 0,
        }
    }

    /// Records that `(group, seq)` must be acknowledged under `class`'s policy, taken at
    /// `now`. Recording the same push twice counts once; if it was pending as catch-up and
    /// comes again live, the (usually stricter) live policy applies from then on.
    pub(crate) fn record(&mut self, group: &str, seq: u64, class: AckClass, now: Instant) {
        let seqs = match self.pending.get_mut(group) {
            Some(seqs) => seqs,
            None => self.pending.entry(group.to_owned()).or_default(),
        };
        match seqs.entry(seq) {
            Entry::Vacant(entry) => {
                entry.insert(class);
                self.count += 1;
                match class {
                    AckClass::Live => {
                        self.live_count += 1;
                        self.live.note(now);
                    }
                    AckClass::CatchUp => self.catch_up.note(now),
                }
            }
            Entry::Occupied(mut entry) => {
                if class == AckClass::Live && *entry.get() == AckClass::CatchUp {
                    entry.insert(AckClass::Live);
                    self.live_count += 1;
                    self.live.note(now);
                }
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many pending pushes fill a batch: the live size while any live push is
    /// pending, else the catch-up size.
    fn batch_limit(&self) -> usize {
        if self.live_count > 0 {
            self.live.max_batch
        } else {
            self.catch_up.max_batch
        }
    }

    /// When the pending ACKs must go out at the latest, if any are pending: the earliest
    /// tick, of each pending push's policy clock, after the push was taken.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match (self.live.deadline(), self.catch_up.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether an ACK frame should be sent now: the batch is full or a deadline passed.
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.count > 0
            && (self.count >= self.batch_limit() || self.deadline().is_some_and(|d| d <= now))
    }

    /// Takes every pending ACK, consecutive seqs of a group merged into one range.
    pub(crate) fn take(&mut self) -> Vec<AckRange> {
        self.count = 0;
        self.live_count = 0;
        self.live.oldest = None;
        self.catch_up.oldest = None;
        let mut ranges = Vec::new();
        for (group, seqs) in std::mem::take(&mut self.pending) {
            let mut current: Option<(u64, u64)> = None;
            for seq in seqs.into_keys() {
                current = match current {
                    Some((first, last)) if last.checked_add(1) == Some(seq) => Some((first, seq)),
                    Some((first, last)) => {
                        ranges.push(AckRange {
                            group: group.clone(),
                            first,
                            last,
                        });
                        Some((seq, seq))
                    }
                    None => Some((seq, seq)),
                };
            }
            if let Some((first, last)) = current {
                ranges.push(AckRange { group, first, last });
            }
        }
        ranges
    }
}

/// Splits ranges into as few `Ack` frames as fit within `max_frame_len` and the list limit.
pub(crate) fn ack_frames(ranges: Vec<AckRange>, max_frame_len: usize) -> Vec<Frame> {
    // Type byte + u16 count; each range is a u16-prefixed group and two u64s.
    const HEADER: usize = 1 + 2;
    let budget = max_frame_len.min(chat_protocol::MAX_FRAME_LEN);
    let mut frames = Vec::new();
    let mut batch = Vec::new();
    let mut size = HEADER;
    for range in ranges {
        let len = 2 + range.group.len() + 16;
        if !batch.is_empty() && (size + len > budget || batch.len() >= chat_protocol::MAX_LIST_LEN)
        {
            frames.push(Frame::Ack {
                ranges: std::mem::take(&mut batch),
            });
            size = HEADER;
        }
        size += len;
        batch.push(range);
    }
    if !batch.is_empty() {
        frames.push(Frame::Ack { ranges: batch });
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::AckClass::{CatchUp, Live};
    use super::*;

    fn policy(max_delay_ms: u32, max_batch: u16) -> AckPolicy {
        AckPolicy {
            max_delay_ms,
            max_batch,
            retransmit_ms: 5_000,
        }
    }

    /// A batcher whose catch-up policy is far laxer, so only the live one can fire.
    fn live_only(live: AckPolicy, start: Instant) -> AckBatcher {
        AckBatcher::new(live, policy(60_000, 1_000), start, 0.0)
    }

    fn range(group: &str, first: u64, last: u64) -> AckRange {
        AckRange {
            group: group.into(),
            first,
            last,
        }
    }

    #[test]
    fn nothing_pending_is_never_due() {
        let now = Instant::now();
        let b = live_only(policy(100, 10), now);
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
        assert!(!b.is_due(now + Duration::from_secs(3600)));
    }

    #[test]
    fn the_clock_ticks_once_per_period_from_its_phase() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let clock = AckClock::new(t0, ms(1_000), 0.25);
        assert_eq!(clock.next_after(t0), t0 + ms(250));
        // A tick itself is not "after": the next one is a whole period on.
        assert_eq!(clock.next_after(t0 + ms(250)), t0 + ms(1_250));
        assert_eq!(clock.next_after(t0 + ms(251)), t0 + ms(1_250));
        assert_eq!(clock.next_after(t0 + ms(5_100)), t0 + ms(5_250));
        // Never more than a period away, even for a time before the clock started.
        assert_eq!(clock.next_after(t0 - ms(900)), t0 + ms(100));
        // A zero period (ACK at once) ticks whenever asked.
        assert_eq!(
            AckClock::new(t0, ms(0), 0.7).next_after(t0 + ms(3)),
            t0 + ms(3)
        );
    }

    #[test]
    fn members_with_other_phases_ack_the_same_push_at_other_moments() {
        let t0 = Instant::now();
        let pushed = t0 + Duration::from_millis(40);
        let deadlines: Vec<Instant> = [0.1, 0.4, 0.8]
            .into_iter()
            .map(|phase| {
                let mut b = AckBatcher::new(policy(1_000, 50), policy(1_000, 50), t0, phase);
                b.record("g", 1, Live, pushed);
                b.deadline().expect("pending")
            })
            .collect();
        let ms = |d: &Instant| d.duration_since(t0).as_millis();
        assert_eq!(
            deadlines.iter().map(ms).collect::<Vec<_>>(),
            [100, 400, 800]
        );
        // Each within the policy's delay of the push.
        assert!(
            deadlines
                .iter()
                .all(|d| *d <= pushed + Duration::from_millis(1_000))
        );
    }

    #[test]
    fn due_when_the_batch_fills() {
        let t0 = Instant::now();
        let mut b = live_only(policy(1_000, 3), t0);
        b.record("g", 1, Live, t0);
        b.record("g", 2, Live, t0);
        assert!(!b.is_due(t0));
        b.record("g", 3, Live, t0);
        assert!(b.is_due(t0));
    }

    #[test]
    fn due_at_the_first_tick_after_the_oldest() {
        let t0 = Instant::now();
        let mut b = live_only(policy(100, 50), t0);
        b.record("g", 1, Live, t0);
        // A later push does not push the deadline back.
        b.record("g", 2, Live, t0 + Duration::from_millis(90));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(100)));
        assert!(!b.is_due(t0 + Duration::from_millis(99)));
        assert!(b.is_due(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn take_resets_the_clock_and_count() {
        let t0 = Instant::now();
        let mut b = live_only(policy(100, 2), t0);
        b.record("g", 1, Live, t0);
        b.record("g", 2, Live, t0);
        assert_eq!(b.take(), vec![range("g", 1, 2)]);
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
        let t1 = t0 + Duration::from_millis(500);
        b.record("g", 3, Live, t1);
        assert!(!b.is_due(t1));
        assert_eq!(b.deadline(), Some(t1 + Duration::from_millis(100)));
        assert_eq!(b.take(), vec![range("g", 3, 3)]);
        assert_eq!(b.take(), vec![]);
    }

    #[test]
    fn the_same_push_counts_once() {
        let t0 = Instant::now();
        let mut b = live_only(policy(100, 2), t0);
        b.record("g", 7, Live, t0);
        b.record("g", 7, Live, t0);
        assert!(!b.is_due(t0));
        assert_eq!(b.take(), vec![range("g", 7, 7)]);
    }

    #[test]
    fn zero_policy_acks_at_once() {
        let t0 = Instant::now();
        let mut b = live_only(policy(0, 0), t0);
        b.record("g", 1, Live, t0);
        assert!(b.is_due(t0));
    }

    #[test]
    fn catch_up_pushes_batch_under_the_catch_up_policy() {
        let t0 = Instant::now();
        let mut b = AckBatcher::new(policy(100, 2), policy(1_000, 4), t0, 0.0);
        for seq in 1..=3 {
            b.record("g", seq, CatchUp, t0);
        }
        // Past the live batch size and the live delay: neither applies to catch-up pushes.
        assert!(!b.is_due(t0 + Duration::from_millis(999)));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(1_000)));
        b.record("g", 4, CatchUp, t0);
        assert!(b.is_due(t0));
    }

    #[test]
    fn catch_up_pushes_wait_their_own_delay() {
        let t0 = Instant::now();
        let mut b = AckBatcher::new(policy(100, 50), policy(1_000, 50), t0, 0.0);
        b.record("g", 1, CatchUp, t0);
        assert!(!b.is_due(t0 + Duration::from_millis(100)));
        assert!(b.is_due(t0 + Duration::from_millis(1_000)));
    }

    #[test]
    fn a_pending_live_push_brings_in_the_live_batch_size() {
        let t0 = Instant::now();
        let mut b = AckBatcher::new(policy(1_000, 3), policy(1_000, 10), t0, 0.0);
        b.record("g", 1, CatchUp, t0);
        b.record("g", 2, CatchUp, t0);
        assert!(!b.is_due(t0));
        // Three pending, one of them live: the live batch of 3 is full.
        b.record("h", 1, Live, t0);
        assert!(b.is_due(t0));
        assert_eq!(b.take(), vec![range("g", 1, 2), range("h", 1, 1)]);
        // Once taken, catch-up pushes alone go back to the catch-up size.
        for seq in 3..=5 {
            b.record("g", seq, CatchUp, t0);
        }
        assert!(!b.is_due(t0));
    }

    #[test]
    fn the_earliest_deadline_of_either_policy_wins() {
        let t0 = Instant::now();
        let mut b = AckBatcher::new(policy(100, 50), policy(1_000, 50), t0, 0.0);
        b.record("g", 1, CatchUp, t0);
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(1_000)));
        // A live push taken later still has the sooner deadline.
        let t1 = t0 + Duration::from_millis(300);
        b.record("g", 2, Live, t1);
        assert_eq!(b.deadline(), Some(t1 + Duration::from_millis(100)));
        assert!(!b.is_due(t1 + Duration::from_millis(99)));
        assert!(b.is_due(t1 + Duration::from_millis(100)));

        // And a catch-up push taken first can be the sooner one.
        let mut b = AckBatcher::new(policy(500, 50), policy(200, 50), t0, 0.0);
        b.record("g", 1, CatchUp, t0);
        b.record("g", 2, Live, t0 + Duration::from_millis(10));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(200)));
    }

    #[test]
    fn take_resets_both_policies() {
        let t0 = Instant::now();
        let mut b = AckBatcher::new(policy(100, 2), policy(1_000, 5), t0, 0.0);
        b.record("g", 1, Live, t0);
        b.record("g", 2, CatchUp, t0);
        assert!(b.is_due(t0));
        assert_eq!(b.take(), vec![range("g", 1, 2)]);
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
        let t1 = t0 + Duration::from_secs(10);
        b.record("g", 3, CatchUp, t1);
        assert_eq!(b.deadline(), Some(t1 + Duration::from_millis(1_000)));
        assert!(!b.is_due(t1));
    }

    #[test]
    fn a_repeat_counts_once_and_live_takes_precedence() {
        let t0 = Instant::now();
        let mut b = AckBatcher::new(policy(100, 2), policy(1_000, 3), t0, 0.0);
        b.record("g", 1, CatchUp, t0);
        b.record("g", 1, CatchUp, t0);
        b.record("g", 2, CatchUp, t0);
        assert!(!b.is_due(t0));
        // Seen again live: still two pending, but now under the live batch size and delay
        // (the live clock's next tick).
        let t1 = t0 + Duration::from_millis(50);
        b.record("g", 2, Live, t1);
        assert!(b.is_due(t1));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(100)));
        // A live push seen again as catch-up stays live.
        let mut b = AckBatcher::new(policy(100, 50), policy(1_000, 50), t0, 0.0);
        b.record("g", 1, Live, t0);
        b.record("g", 1, CatchUp, t0);
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(100)));
        assert_eq!(b.take(), vec![range("g", 1, 1)]);
    }

    #[test]
    fn zero_catch_up_policy_acks_at_once() {
        let t0 = Instant::now();
        let mut b = AckBatcher::new(policy(1_000, 100), policy(0, 0), t0, 0.0);
        b.record("g", 1, CatchUp, t0);
        assert!(b.is_due(t0));
    }

    #[test]
    fn the_class_follows_the_catch_up_flag() {
        let mut m = Message {
            group: "g".into(),
            seq: 1,
            sender: String::new(),
            ts_ms: 0,
            flags: Message::FLAG_HIDDEN | Message::FLAG_PRIVATE,
            body: Default::default(),
        };
        assert_eq!(AckClass::of(&m), Live);
        m.flags |= Message::FLAG_CATCH_UP;
        assert_eq!(AckClass::of(&m), CatchUp);
    }

    #[test]
    fn merges_consecutive_seqs_per_group() {
        let t0 = Instant::now();
        let mut b = live_only(policy(100, 100), t0);
        for seq in [5, 3, 4, 9, 10, 1, 12] {
            b.record("b", seq, Live, t0);
        }
        b.record("a", 2, Live, t0);
        b.record("a", 1, Live, t0);
        assert_eq!(
            b.take(),
            vec![
                range("a", 1, 2),
                range("b", 1, 1),
                range("b", 3, 5),
                range("b", 9, 10),
                range("b", 12, 12),
            ]
        );
    }

    #[test]
    fn merging_survives_u64_max() {
        let t0 = Instant::now();
        let mut b = live_only(policy(100, 100), t0);
        b.record("g", u64::MAX, Live, t0);
        b.record("g", u64::MAX - 1, Live, t0);
        assert_eq!(b.take(), vec![range("g", u64::MAX - 1, u64::MAX)]);
    }

    #[test]
    fn ack_frames_split_by_size() {
        let ranges: Vec<_> = (0..10).map(|i| range("group", i * 2, i * 2)).collect();
        // Each range costs 2 + 5 + 16 = 23 bytes; 3 header bytes; 50 bytes fit two ranges.
        let frames = ack_frames(ranges.clone(), 50);
        assert_eq!(frames.len(), 5);
        let mut back = Vec::new();
        for frame in frames {
            let Frame::Ack { ranges } = frame else {
                panic!("not an ack")
            };
            assert_eq!(ranges.len(), 2);
            back.extend(ranges);
        }
        assert_eq!(back, ranges);
        assert_eq!(ack_frames(ranges, 1 << 20).len(), 1);
        assert!(ack_frames(Vec::new(), 1 << 20).is_empty());
    }

    #[test]
    fn ack_frames_respect_the_list_limit() {
        let n = chat_protocol::MAX_LIST_LEN + 1;
        let ranges: Vec<_> = (0..n as u64).map(|i| range("g", i * 2, i * 2)).collect();
        let frames = ack_frames(ranges, usize::MAX);
        // 10_001 ranges of 19 bytes exceed 256 KiB, so the size splits first.
        assert!(frames.len() >= 2);
        for frame in &frames {
            assert!(frame.encode().len() - 4 <= chat_protocol::MAX_FRAME_LEN);
        }
    }
}
