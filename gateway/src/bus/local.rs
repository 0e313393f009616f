use std::collections::HashSet;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Bus, BusError, Event, Topic};

/// In-process bus for a single gateway: publishing hands the event straight to this
/// node's event stream when the topic is subscribed.
pub struct LocalBus {
    subscribed: Mutex<HashSet<Topic>>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
}

impl LocalBus {
    pub fn new() -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Self {
            subscribed: Mutex::new(HashSet::new()),
            events_tx,
            events_rx: Mutex::new(Some(events_rx)),
        }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, topic: Topic, event: Event) -> Result<(), BusError> {
        if self.subscribed.lock().expect("bus lock").contains(&topic) {
            // The receiver lives as long as the node; if it is gone we are shutting down.
            let _ = self.events_tx.send(event);
        }
        Ok(())
    }

    async fn subscribe(&self, topic: Topic) -> Result<(), BusError> {
        self.subscribed.lock().expect("bus lock").insert(topic);
        Ok(())
    }

    async fn unsubscribe(&self, topic: Topic) -> Result<(), BusError> {
        self.subscribed.lock().expect("bus lock").remove(&topic);
        Ok(())
    }

    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.events_rx.lock().expect("bus lock").take()
    }
}
