//! Delivery cursors of every connection, merged and written together: one store call per
//! interval for the whole gateway, not one per connection (10,000 connections acknowledging
//! made 10,000 small write transactions a second).
//!
//! Each connection records into its own [`DeviceCursors`] (an uncontended lock, no
//! allocation once its groups are known); the first record since a flush puts the device
//! on the list the next flush drains, so a flush visits only devices that acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::store::{CursorAdvance, Store};

pub(crate) struct Cursors {
    store: Arc<dyn Store>,
    /// Devices with cursors recorded since the last flush.
    dirty: Mutex<Vec<Arc<Device>>>,
    /// Held while writing, so a flush returns only once what was recorded before it is written.
    writing: tokio::sync::Mutex<()>,
}

/// One connection's cursors not written yet.
struct Device {
    user: String,
    device: String,
    /// group → highest acknowledged seq. Drained by a flush, keeping its capacity.
    pending: Mutex<HashMap<Arc<str>, u64, foldhash::fast::RandomState>>,
    /// On the `dirty` list (cleared before a flush drains `pending`, so nothing recorded
    /// meanwhile is missed: at worst the next flush finds the map empty).
    listed: AtomicBool,
}

/// Where one connection records how far its device acknowledged.
pub(crate) struct DeviceCursors {
    cursors: Arc<Cursors>,
    device: Arc<Device>,
}

impl Cursors {
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            dirty: Mutex::new(Vec::new()),
            writing: tokio::sync::Mutex::new(()),
        })
    }

    /// The recorder of one connection of `user`'s `device`.
    pub fn device(self: &Arc<Self>, user: &str, device: &str) -> DeviceCursors {
        DeviceCursors {
            cursors: self.clone(),
            device: Arc::new(Device {
                user: user.to_owned(),
                device: device.to_owned(),
                pending: Mutex::default(),
                listed: AtomicBool::new(false),
            }),
        }
    }

    /// Writes everything recorded so far, in one store call.
    pub async fn flush(&self) {
        let _writing = self.writing.lock().await;
        let dirty = std::mem::take(&mut *self.dirty.lock().expect("cursors lock"));
        let batch: Vec<CursorAdvance> = dirty
            .iter()
            .filter_map(|d| {
                d.listed.store(false, Ordering::Release);
                let groups: Vec<(String, u64)> = d
                    .pending
                    .lock()
                    .expect("device cursors lock")
                    .drain()
                    .map(|(group, seq)| (group.to_string(), seq))
                    .collect();
                (!groups.is_empty()).then(|| (d.user.clone(), d.device.clone(), groups))
            })
            .collect();
        if batch.is_empty() {
            return;
        }
        if let Err(error) = self.store.advance_cursors_batch(&batch).await {
            // The pushes stay acknowledged; a lost cursor only means a redelivery (dropped
            // by the client) after the device's next reconnect.
            tracing::warn!(devices = batch.len(), %error, "saving delivery cursors failed");
        }
    }

    /// Flushes every `every` until the gateway lets go of the batcher.
    pub async fn flush_forever(cursors: Weak<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match cursors.upgrade() {
                Some(cursors) => cursors.flush().await,
                None => return,
            }
        }
    }
}

impl DeviceCursors {
    /// Notes how far the device acknowledged; written by the next flush.
    pub fn record(&self, cursors: impl IntoIterator<Item = (Arc<str>, u64)>) {
        {
            let mut pending = self.device.pending.lock().expect("device cursors lock");
            for (group, seq) in cursors {
                match pending.get_mut(&*group) {
                    Some(saved) => *saved = (*saved).max(seq),
                    None => {
                        pending.insert(group, seq);
                    }
                }
            }
        }
        if !self.device.listed.swap(true, Ordering::AcqRel) {
            let device = self.device.clone();
            self.cursors
                .dirty
                .lock()
                .expect("cursors lock")
                .push(device);
        }
    }
}
