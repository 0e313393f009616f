//! What the QUIC shell counts: connections by how they ended, pushes, retransmits and
//! ACKs. Read by `/metrics` and by benchmarks ([`DeliveryStats`]).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::{Reason, latency_histogram, register_seconds};

pub(crate) struct ServerMetrics {
    pub opened: Counter,
    /// Established connections, by how they ended.
    pub closed: Family<Reason, Counter>,
    /// Connections that never got past the handshake, by why.
    pub rejected: Family<Reason, Counter>,
    pub pushes: Counter,
    pub retransmits: Counter,
    pub ack_frames: Counter,
    pub acked: Counter,
    /// Messages announced with `Skipped` instead of pushed (too far behind on connect).
    pub skipped: Counter,
    /// Background groups reported in `Activity` frames instead of pushed.
    pub activity: Counter,
    /// Live pushes not held for a connection still starting, past `delivery.queue` (it
    /// catches up from the log instead).
    pub dropped: Counter,
    /// From a live message's arrival to its push queued on every local recipient's stream.
    pub push_delay: Histogram,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self {
            opened: Counter::default(),
            closed: Family::default(),
            rejected: Family::default(),
            pushes: Counter::default(),
            retransmits: Counter::default(),
            ack_frames: Counter::default(),
            acked: Counter::default(),
            skipped: Counter::default(),
            activity: Counter::default(),
            dropped: Counter::default(),
            push_delay: latency_histogram(),
        }
    }
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

impl ServerMetrics {
    pub fn close(&self, reason: &'static str) {
        self.closed.get_or_create(&Reason { reason }).inc();
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&Reason { reason }).inc();
    }

    pub fn delivery(&self) -> DeliveryStats {
        DeliveryStats {
            pushes: self.pushes.get(),
            retransmits: self.retransmits.get(),
            ack_frames: self.ack_frames.get(),
            acked: self.acked.get(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "connections_opened",
                "Client connections that completed Hello",
                &self.opened,
            ),
            (
                "pushes",
                "Messages written to push streams for the first time (live or caught up)",
                &self.pushes,
            ),
            (
                "pushes_retransmitted",
                "Pushes written again after their ACK timeout",
                &self.retransmits,
            ),
            ("ack_frames", "Ack frames received", &self.ack_frames),
            (
                "pushes_acknowledged",
                "Pushes acknowledged by clients: messages delivered",
                &self.acked,
            ),
            (
                "messages_skipped",
                "Messages announced with Skipped (too far behind on connect) instead of pushed",
                &self.skipped,
            ),
            (
                "activity_reports",
                "Background groups reported in Activity frames (compact notices) instead of pushed",
                &self.activity,
            ),
            (
                "pushes_dropped",
                "Live pushes not held for a connection still starting, past delivery.queue (it catches up from the log)",
                &self.dropped,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "connections_closed",
            "Established connections that ended, by reason",
            self.closed.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections refused before or during Hello, by reason",
            self.rejected.clone(),
        );
        register_seconds(
            registry,
            "push_delay",
            "From a live message's arrival from the bus to its push queued on every local recipient's stream",
            self.push_delay.clone(),
        );
    }
}
