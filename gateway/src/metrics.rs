//! Prometheus metrics (`GET /metrics` on the admin endpoint).
//!
//! Each component owns the handles it updates on its own path — atomic counters, and
//! histograms observed once per message, write or call, never per recipient. This module
//! registers them under one registry and, at each scrape, reads what is cheaper to read
//! then than to keep up to date (connections, queue depths, subscriptions, plugin state).
//! Labels are bounded: reasons, store operations, plugin and hook names; never users or
//! groups.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::node::Node;
use crate::server::QuicStats;

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A latency histogram from 100 µs to about 26 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// A family of latency histograms, one per label set.
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub fn latency_family<L: Clone + std::hash::Hash + Eq>() -> LatencyFamily<L> {
    Family::new_with_constructor(latency_histogram)
}

/// One label: why something happened (`reason="idle_timeout"`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// Every metric of one gateway.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub(crate) fn new(shared: &Arc<crate::server::Shared>) -> Self {
        let mut registry = Registry::with_prefix("chat");
        shared.metrics.register(&mut registry);
        shared.store_metrics.register(&mut registry);
        let node = &shared.node;
        node.register_metrics(&mut registry);
        node.plugins.register_metrics(&mut registry);
        node.unread.register_metrics(&mut registry);
        registry.register_collector(Box::new(Snapshot {
            node: node.clone(),
            quic: shared.quic.clone(),
        }));
        Self { registry }
    }

    /// The Prometheus text exposition of every metric, as of now.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Registers a histogram of seconds.
pub fn register_seconds(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    registry.register_with_unit(name, help, Unit::Seconds, metric);
}

/// What is read at scrape time rather than kept up to date on every change.
struct Snapshot {
    node: Arc<Node>,
    quic: Arc<QuicStats>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot")
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let local = self.node.local_stats();
        gauge(
            &mut encoder,
            "connections",
            "Client connections open on this gateway",
            local.connections,
        )?;
        gauge(
            &mut encoder,
            "local_users",
            "Users with at least one connection here",
            local.users,
        )?;
        gauge(
            &mut encoder,
            "local_groups",
            "Groups with at least one member connected here",
            local.groups,
        )?;
        gauge(
            &mut encoder,
            "bus_subscriptions",
            "Pub/sub topics this gateway is subscribed to (groups, users, its own)",
            local.groups + local.users + 1,
        )?;
        let quic = self.quic.totals();
        let transport = [
            (
                "quic_datagrams_sent",
                "UDP datagrams sent to clients",
                quic.datagrams_sent,
            ),
            (
                "quic_send_calls",
                "System calls that sent them (fewer than datagrams with GSO)",
                quic.send_calls,
            ),
            (
                "quic_bytes_sent",
                "UDP payload bytes sent to clients",
                quic.bytes_sent,
            ),
            (
                "quic_datagrams_received",
                "UDP datagrams received from clients",
                quic.datagrams_received,
            ),
            (
                "quic_bytes_received",
                "UDP payload bytes received from clients",
                quic.bytes_received,
            ),
            (
                "quic_packets_lost",
                "Packets QUIC declared lost and sent again",
                quic.packets_lost,
            ),
            (
                "quic_congestion_events",
                "Times a connection's congestion window shrank",
                quic.congestion_events,
            ),
        ];
        for (name, help, value) in transport {
            counter(&mut encoder, name, help, value)?;
        }
        counter(
            &mut encoder,
            "redis_commands",
            "Redis commands sent by this process (pipelines count each command)",
            crate::redis_target::COMMANDS_SENT.load(Ordering::Relaxed),
        )?;
        let plugins = self.node.plugins.describe();
        if !plugins.is_empty() {
            let mut family = encoder.encode_descriptor(
                "plugin_disabled",
                "1 while a plugin is disabled after repeated faults (until reloaded)",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for plugin in plugins {
                let labels = [("plugin", plugin.description.name)];
                ConstGauge::new(i64::from(plugin.disabled))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: usize,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}
