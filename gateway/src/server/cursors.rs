//! Delivery cursors of every connection, merged and written together: one store call per
//! interval for the whole gateway, not one per connection (10,000 connections acknowledging
//! made 10,000 small write transactions a second).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::store::{CursorAdvance, Store};

/// device → group → highest acknowledged seq.
type Devices = HashMap<String, HashMap<String, u64>>;

pub(crate) struct Cursors {
    store: Arc<dyn Store>,
    /// user → device → group → highest acknowledged seq, not written yet. Nested so that
    /// recording (once per `Ack` frame) looks keys up by `&str` and allocates only for a
    /// device or group new since the last flush.
    pending: Mutex<HashMap<String, Devices>>,
    /// Held while writing, so a flush returns only once what was recorded before it is written.
    writing: tokio::sync::Mutex<()>,
}

impl Cursors {
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            pending: Mutex::new(HashMap::new()),
            writing: tokio::sync::Mutex::new(()),
        })
    }

    /// Notes how far a device acknowledged; written by the next flush.
    pub fn record<G: AsRef<str>>(
        &self,
        user: &str,
        device: &str,
        cursors: impl IntoIterator<Item = (G, u64)>,
    ) {
        let mut pending = self.pending.lock().expect("cursors lock");
        let devices = entry(&mut pending, user);
        let groups = entry(devices, device);
        for (group, seq) in cursors {
            let saved = entry(groups, group.as_ref());
            *saved = (*saved).max(seq);
        }
    }

    /// Writes everything recorded so far, in one store call.
    pub async fn flush(&self) {
        let _writing = self.writing.lock().await;
        let pending = std::mem::take(&mut *self.pending.lock().expect("cursors lock"));
        let batch: Vec<CursorAdvance> = pending
            .into_iter()
            .flat_map(|(user, devices)| {
                devices.into_iter().map(move |(device, groups)| {
                    (user.clone(), device, groups.into_iter().collect())
                })
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

/// `map[key]`, inserted empty if missing; the key is copied only then.
fn entry<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key).expect("just inserted")
}
