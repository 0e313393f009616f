//! Delivery counters of one gateway, shared by its connection tasks: what benchmarks read
//! now and what the metrics endpoint exports.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct DeliveryCounters {
    pushes: AtomicU64,
    retransmits: AtomicU64,
    ack_frames: AtomicU64,
    acked: AtomicU64,
}

/// A snapshot of the delivery counters since the gateway started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Pushes written for the first time (live or caught up from the log).
    pub pushes: u64,
    /// Pushes written again because they stayed unacknowledged past their timeout.
    pub retransmits: u64,
    /// `Ack` frames received.
    pub ack_frames: u64,
    /// Pushes those frames acknowledged.
    pub acked: u64,
}

impl DeliveryCounters {
    pub fn pushed(&self, n: usize) {
        self.pushes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn retransmitted(&self, n: usize) {
        self.retransmits.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn ack_frame(&self) {
        self.ack_frames.fetch_add(1, Ordering::Relaxed);
    }

    pub fn acknowledged(&self, n: usize) {
        self.acked.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> DeliveryStats {
        DeliveryStats {
            pushes: self.pushes.load(Ordering::Relaxed),
            retransmits: self.retransmits.load(Ordering::Relaxed),
            ack_frames: self.ack_frames.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
        }
    }
}
