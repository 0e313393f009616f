//! A [`Store`] that times every call to the one it wraps and counts its errors, by
//! operation: what `chat_store_operation_seconds` and `chat_store_errors_total` show.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::*;
use crate::metrics::{LatencyFamily, latency_family, register_seconds};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    op: &'static str,
}

/// Store latency and errors by operation; cloned handles share the same series.
#[derive(Clone)]
pub struct StoreMetrics {
    seconds: LatencyFamily<Operation>,
    errors: Family<Operation, Counter>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            seconds: latency_family(),
            errors: Family::default(),
        }
    }
}

impl StoreMetrics {
    pub fn register(&self, registry: &mut Registry) {
        register_seconds(
            registry,
            "store_operation",
            "Store calls (embedded or Redis) and their latency, by operation",
            self.seconds.clone(),
        );
        registry.register(
            "store_errors",
            "Store calls that failed, by operation",
            self.errors.clone(),
        );
    }

    async fn observe<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        let labels = Operation { op };
        self.seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors.get_or_create(&labels).inc();
        }
        result
    }
}

pub struct Metered {
    inner: Arc<dyn Store>,
    metrics: StoreMetrics,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>, metrics: StoreMetrics) -> Self {
        Self { inner, metrics }
    }
}

/// Each method forwards to the inner store under `observe`, labelled with its own name.
macro_rules! metered {
    ($(fn $op:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        #[async_trait]
        impl Store for Metered {
            $(async fn $op(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                self.metrics.observe(stringify!($op), self.inner.$op($($arg),*)).await
            })*
        }
    };
}

metered! {
    fn create_group(&self, group: &str, owner: &str, members: &[String], now_ms: u64) -> ();
    fn group(&self, group: &str) -> Option<GroupInfo>;
    fn add_members(&self, group: &str, users: &[String]) -> Vec<Membership>;
    fn remove_members(&self, group: &str, users: &[String]) -> Vec<String>;
    fn membership(&self, group: &str, user: &str) -> Option<Membership>;
    fn members(&self, group: &str, after: &str, limit: usize) -> Vec<Membership>;
    fn groups_of(&self, user: &str) -> Vec<Membership>;
    fn conversations(&self, user: &str) -> Vec<(Membership, GroupInfo)>;
    fn append(&self, message: NewMessage) -> Appended;
    fn append_batch(&self, messages: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>>;
    fn messages(&self, group: &str, range: SeqRange, from: PageFrom, limit: usize) -> Vec<StoredMessage>;
    fn cursors(&self, user: &str, device: &str) -> Vec<(String, u64)>;
    fn plugin_get(&self, plugin: &str, key: &str) -> Option<Bytes>;
    fn plugin_set(&self, plugin: &str, key: &str, value: &[u8]) -> ();
    fn plugin_delete(&self, plugin: &str, key: &str) -> ();
    fn advance_cursors_batch(&self, batch: &[CursorAdvance]) -> ();
    fn counted_seq(&self, group: &str) -> u64;
    fn count_unread(&self, group: &str, from: u64, to: u64, increments: &[(String, u64)]) -> Option<Vec<(String, u64)>>;
    fn mark_read(&self, group: &str, user: &str, read_seq: u64, count: u64, counted: u64) -> bool;
    fn unread(&self, user: &str) -> Vec<UnreadState>;
    fn buffer_offline(&self, group: &str, refs: &[(String, u64)], capacity: usize) -> ();
    fn offline(&self, user: &str, device: &str) -> OfflineBuffer;
    fn offline_synced(&self, user: &str, device: &str, position: u64) -> ();
    fn read_marker(&self, group: &str, user: &str) -> u64;
    fn live_gateways(&self, gateway: &str, now_ms: u64, ttl_ms: u64) -> Vec<String>;
}
