//! Delayed, batched acknowledgements, as the gateway's [`AckPolicy`] asks.
//!
//! Pure state driven by explicit [`Instant`]s so the timing rules are unit-tested
//! without sockets or sleeps; a background task owns the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chat_protocol::{AckPolicy, AckRange, Frame};

/// Pushes taken by the application whose ACK has not been sent yet.
#[derive(Debug)]
pub(crate) struct AckBatcher {
    max_delay: Duration,
    max_batch: usize,
    pending: BTreeMap<String, BTreeSet<u64>>,
    count: usize,
    /// When the oldest pending ACK was recorded: the delay runs from there.
    oldest: Option<Instant>,
}

impl AckBatcher {
    pub(crate) fn new(policy: AckPolicy) -> Self {
        Self {
            max_delay: Duration::from_millis(policy.max_delay_ms.into()),
            // A zero batch would never fire; treat it as "ack each push at once".
            max_batch: usize::from(policy.max_batch).max(1),
            pending: BTreeMap::new(),
            count: 0,
            oldest: None,
        }
    }

    /// Records that `(group, seq)` must be acknowledged. Recording the same push twice counts once.
    pub(crate) fn record(&mut self, group: &str, seq: u64, now: Instant) {
        let seqs = match self.pending.get_mut(group) {
            Some(seqs) => seqs,
            None => self.pending.entry(group.to_owned()).or_default(),
        };
        if seqs.insert(seq) {
            self.count += 1;
            self.oldest.get_or_insert(now);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// When the pending ACKs must go out at the latest, if any are pending.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.max_delay)
    }

    /// Whether an ACK frame should be sent now: the batch is full or the oldest waited long enough.
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.count >= self.max_batch || self.deadline().is_some_and(|d| d <= now)
    }

    /// Takes every pending ACK, consecutive seqs of a group merged into one range.
    pub(crate) fn take(&mut self) -> Vec<AckRange> {
        self.count = 0;
        self.oldest = None;
        let mut ranges = Vec::new();
        for (group, seqs) in std::mem::take(&mut self.pending) {
            let mut current: Option<(u64, u64)> = None;
            for seq in seqs {
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
    use super::*;

    fn policy(max_delay_ms: u32, max_batch: u16) -> AckPolicy {
        AckPolicy {
            max_delay_ms,
            max_batch,
            retransmit_ms: 5_000,
        }
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
        let b = AckBatcher::new(policy(100, 10));
        let now = Instant::now();
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
        assert!(!b.is_due(now + Duration::from_secs(3600)));
    }

    #[test]
    fn due_when_the_batch_fills() {
        let mut b = AckBatcher::new(policy(1_000, 3));
        let t0 = Instant::now();
        b.record("g", 1, t0);
        b.record("g", 2, t0);
        assert!(!b.is_due(t0));
        b.record("g", 3, t0);
        assert!(b.is_due(t0));
    }

    #[test]
    fn due_when_the_oldest_waited_max_delay() {
        let mut b = AckBatcher::new(policy(100, 50));
        let t0 = Instant::now();
        b.record("g", 1, t0);
        // A later push does not push the deadline back.
        b.record("g", 2, t0 + Duration::from_millis(90));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(100)));
        assert!(!b.is_due(t0 + Duration::from_millis(99)));
        assert!(b.is_due(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn take_resets_the_clock_and_count() {
        let mut b = AckBatcher::new(policy(100, 2));
        let t0 = Instant::now();
        b.record("g", 1, t0);
        b.record("g", 2, t0);
        assert_eq!(b.take(), vec![range("g", 1, 2)]);
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
        let t1 = t0 + Duration::from_millis(500);
        b.record("g", 3, t1);
        assert!(!b.is_due(t1));
        assert_eq!(b.deadline(), Some(t1 + Duration::from_millis(100)));
        assert_eq!(b.take(), vec![range("g", 3, 3)]);
        assert_eq!(b.take(), vec![]);
    }

    #[test]
    fn the_same_push_counts_once() {
        let mut b = AckBatcher::new(policy(100, 2));
        let t0 = Instant::now();
        b.record("g", 7, t0);
        b.record("g", 7, t0);
        assert!(!b.is_due(t0));
        assert_eq!(b.take(), vec![range("g", 7, 7)]);
    }

    #[test]
    fn zero_policy_acks_at_once() {
        let mut b = AckBatcher::new(policy(0, 0));
        let t0 = Instant::now();
        b.record("g", 1, t0);
        assert!(b.is_due(t0));
    }

    #[test]
    fn merges_consecutive_seqs_per_group() {
        let mut b = AckBatcher::new(policy(100, 100));
        let t0 = Instant::now();
        for seq in [5, 3, 4, 9, 10, 1, 12] {
            b.record("b", seq, t0);
        }
        b.record("a", 2, t0);
        b.record("a", 1, t0);
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
        let mut b = AckBatcher::new(policy(100, 100));
        let t0 = Instant::now();
        b.record("g", u64::MAX, t0);
        b.record("g", u64::MAX - 1, t0);
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
