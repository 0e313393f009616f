//! One member's side of `chat/1`, without sockets: what it writes to join, what the
//! gateway's answers and pushes mean, and when its batched ACK is due. The member's loop
//! (`endpoint.rs`) carries the bytes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_client::AckClock;
use chat_protocol::{AckPolicy, AckRange, Frame, FrameDecoder, PROTOCOL_VERSION};

use super::sent_ns;

/// What one member saw.
#[derive(Default)]
pub struct Seen {
    /// Unique pushes (seqs not seen before in their group).
    pub unique: u64,
    /// End-to-end latency of each, in microseconds.
    pub latencies_us: Vec<u32>,
    /// In the background: each `Activity` entry that covered new seqs, as (group, first
    /// seq, last seq, arrival on the clock); latencies come from the send times later.
    pub notices: Vec<(String, u64, u64, u64)>,
    /// When the last unique push arrived.
    pub last_at: Option<Instant>,
}

impl Seen {
    pub fn merge(&mut self, other: Seen) {
        self.unique += other.unique;
        self.latencies_us.extend(other.latencies_us);
        self.notices.extend(other.notices);
        self.last_at = self.last_at.max(other.last_at);
    }
}

pub struct Member {
    background: bool,
    control: FrameDecoder,
    push: FrameDecoder,
    /// The live ACK policy and its clock, from the Welcome.
    acks: Option<(AckPolicy, AckClock)>,
    /// In the background: the gateway applied its focus (`Done` for it).
    focused: bool,
    /// Joined: welcomed and, in the background, its focus applied.
    joined: bool,
    latest: HashMap<String, u64>,
    pending: Vec<AckRange>,
    pending_count: u16,
    ack_due: Option<Instant>,
    pub seen: Seen,
}

impl Member {
    /// A member that keeps its groups in the background (`Focus` naming none) with
    /// `background`; and the frames it opens its control stream with.
    pub fn new(token: String, background: bool) -> (Self, Vec<Bytes>) {
        let mut hello = vec![
            Frame::Hello {
                version: PROTOCOL_VERSION,
                token,
                device: "bench".into(),
            }
            .encode(),
        ];
        if background {
            hello.push(
                Frame::Focus {
                    id: 1,
                    groups: Vec::new(),
                }
                .encode(),
            );
        }
        let member = Self {
            background,
            control: FrameDecoder::new(),
            push: FrameDecoder::new(),
            acks: None,
            focused: false,
            joined: false,
            latest: HashMap::new(),
            pending: Vec::new(),
            pending_count: 0,
            ack_due: None,
            seen: Seen::default(),
        };
        (member, hello)
    }

    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Bytes of the control stream. Until joined: the Welcome (and the focus's `Done`);
    /// anything else is an error. After: nothing the load needs.
    pub fn on_control(&mut self, bytes: &[u8], now: Instant) -> anyhow::Result<()> {
        if self.joined {
            return Ok(());
        }
        self.control.extend(bytes);
        while let Some(frame) = self.control.next_frame()? {
            match frame {
                Frame::Welcome { ack, .. } => {
                    // ACKs go on the member's own clock, as chat-client sends them.
                    let period = Duration::from_millis(ack.max_delay_ms.into());
                    self.acks = Some((ack, AckClock::new(now, period, rand::random())));
                }
                Frame::Done { id: 1 } if self.background => self.focused = true,
                other => anyhow::bail!("unexpected {:?} while connecting", other.frame_type()),
            }
            if self.acks.is_some() && (self.focused || !self.background) {
                self.joined = true;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Bytes of the push stream, arrived at `now` (`now_ns` on the run's clock). Returns
    /// an ACK frame to send at once when the batch is full.
    pub fn on_push(
        &mut self,
        bytes: &[u8],
        now: Instant,
        now_ns: u64,
    ) -> anyhow::Result<Option<Bytes>> {
        self.push.extend(bytes);
        while let Some(frame) = self.push.next_frame()? {
            let message = match frame {
                Frame::Push { message } => message,
                Frame::Activity { groups } => {
                    for a in groups {
                        let last = self.latest.entry(a.group.clone()).or_default();
                        if a.seq > *last {
                            self.seen.unique += a.seq - *last;
                            self.seen.last_at = Some(now);
                            self.seen.notices.push((a.group, *last + 1, a.seq, now_ns));
                            *last = a.seq;
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let seq = message.seq;
            let last = match self.latest.get_mut(&message.group) {
                Some(last) => last,
                None => self.latest.entry(message.group.clone()).or_default(),
            };
            if seq > *last {
                *last = seq;
                self.seen.unique += 1;
                self.seen.last_at = Some(now);
                if let Some(sent) = sent_ns(&message.body) {
                    let us = now_ns.saturating_sub(sent) / 1000;
                    self.seen.latencies_us.push(us.min(u32::MAX.into()) as u32);
                }
            }
            add_ack(&mut self.pending, message.group, seq);
            self.pending_count += 1;
            if self.ack_due.is_none() {
                self.ack_due = self.acks.as_ref().map(|(_, clock)| clock.next_after(now));
            }
        }
        let full = self
            .acks
            .as_ref()
            .is_some_and(|(policy, _)| self.pending_count >= policy.max_batch);
        Ok(if full { self.take_ack() } else { None })
    }

    /// When the pending ACK must go out, if one is pending.
    pub fn ack_due(&self) -> Option<Instant> {
        self.ack_due
    }

    /// The pending ACK as a frame, if any.
    pub fn take_ack(&mut self) -> Option<Bytes> {
        (self.pending_count, self.ack_due) = (0, None);
        if self.pending.is_empty() {
            return None;
        }
        let ranges = std::mem::take(&mut self.pending);
        Some(Frame::Ack { ranges }.encode())
    }
}

fn add_ack(pending: &mut Vec<AckRange>, group: String, seq: u64) {
    if let Some(range) = pending
        .iter_mut()
        .find(|r| r.group == group && r.last + 1 == seq)
    {
        range.last = seq;
        return;
    }
    pending.push(AckRange {
        group,
        first: seq,
        last: seq,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::{GroupActivity, Message};

    fn welcome(max_batch: u16) -> Bytes {
        let ack = AckPolicy {
            max_delay_ms: 1000,
            max_batch,
            retransmit_ms: 15000,
        };
        Frame::Welcome {
            version: PROTOCOL_VERSION,
            user: "m0".into(),
            ack,
            catch_up_ack: ack,
            max_frame_len: chat_protocol::MAX_FRAME_LEN as u32,
        }
        .encode()
    }

    fn push(seq: u64, sent_ns: u64) -> Bytes {
        chat_protocol::encode_push(&Message {
            group: "g".into(),
            seq,
            sender: "s".into(),
            ts_ms: 0,
            flags: 0,
            body: super::super::body(sent_ns, 200),
        })
    }

    fn decode(bytes: &[u8]) -> Vec<Frame> {
        let mut decoder = FrameDecoder::new();
        decoder.extend(bytes);
        std::iter::from_fn(|| decoder.next_frame().unwrap()).collect()
    }

    #[test]
    fn joins_once_welcomed_and_in_the_background_once_its_focus_is_applied() {
        let now = Instant::now();
        let (mut member, hello) = Member::new("token".into(), false);
        assert!(matches!(&decode(&hello[0])[0], Frame::Hello { token, .. } if token == "token"));
        member.on_control(&welcome(64), now).unwrap();
        assert!(member.joined());

        let (mut member, hello) = Member::new("token".into(), true);
        assert!(
            matches!(&decode(&hello[1])[0], Frame::Focus { id: 1, groups } if groups.is_empty())
        );
        member.on_control(&welcome(64), now).unwrap();
        assert!(!member.joined(), "joined before the focus was applied");
        member
            .on_control(&Frame::Done { id: 1 }.encode(), now)
            .unwrap();
        assert!(member.joined());

        let (mut member, _) = Member::new("token".into(), false);
        let refused = Frame::Done { id: 7 }.encode();
        assert!(member.on_control(&refused, now).is_err());
    }

    #[test]
    fn counts_each_seq_once_with_its_latency_and_acks_a_full_batch_at_once() {
        let now = Instant::now();
        let (mut member, _) = Member::new("token".into(), false);
        member.on_control(&welcome(3), now).unwrap();

        // A push split across two reads, then a repeat of it.
        let first = push(1, 1_000_000);
        assert!(member.on_push(&first[..10], now, 0).unwrap().is_none());
        assert!(
            member
                .on_push(&first[10..], now, 6_000_000)
                .unwrap()
                .is_none()
        );
        assert!(member.on_push(&first, now, 7_000_000).unwrap().is_none());
        assert_eq!(member.seen.unique, 1);
        assert_eq!(member.seen.latencies_us, [5_000]);
        assert!(
            member
                .ack_due()
                .is_some_and(|due| due <= now + Duration::from_secs(1))
        );

        // The third push waiting fills the batch: one ACK, at once.
        let ack = member.on_push(&push(2, 1_000_000), now, 2_000_000).unwrap();
        let ack = ack.expect("a full batch is acknowledged at once");
        assert_eq!(member.seen.unique, 2);
        let Frame::Ack { ranges } = &decode(&ack)[0] else {
            panic!("not an Ack");
        };
        assert!(ranges.iter().all(|r| r.group == "g"));
        assert_eq!(ranges.iter().map(|r| r.last).max(), Some(2));
        assert!(member.ack_due().is_none());
        assert!(member.take_ack().is_none());
    }

    #[test]
    fn an_activity_notice_counts_the_seqs_it_covers_once() {
        let now = Instant::now();
        let (mut member, _) = Member::new("token".into(), true);
        member.on_control(&welcome(64), now).unwrap();
        member
            .on_control(&Frame::Done { id: 1 }.encode(), now)
            .unwrap();
        let notice = |seq| {
            Frame::Activity {
                groups: vec![GroupActivity {
                    group: "g".into(),
                    seq,
                    pending: seq,
                }],
            }
            .encode()
        };
        member.on_push(&notice(3), now, 10).unwrap();
        member.on_push(&notice(3), now, 20).unwrap();
        member.on_push(&notice(5), now, 30).unwrap();
        assert_eq!(member.seen.unique, 5);
        assert_eq!(
            member.seen.notices,
            [("g".to_string(), 1, 3, 10), ("g".to_string(), 4, 5, 30)]
        );
    }
}
