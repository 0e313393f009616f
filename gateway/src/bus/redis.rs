//! The bus on Redis pub/sub: one channel per group (`chat:{g:GROUP}:events`) and per user
//! (`chat:{u:USER}:events`). A gateway subscribes to a channel only while it holds a local
//! connection that cares, so Redis routes each message to the gateways that need it and
//! no key anywhere says who is online where.
//!
//! Pub/sub delivers at most once. When the subscription connection drops, the bus
//! reconnects with backoff, subscribes again to every topic, and raises
//! [`Event::Resync`]: the node then catches every local connection up from the log.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, PubSubSink};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Bus, BusError, Event, Topic};

fn channel(topic: &Topic) -> String {
    match topic {
        Topic::Group(group) => format!("chat:{{g:{group}}}:events"),
        Topic::User(user) => format!("chat:{{u:{user}}}:events"),
    }
}

fn unavailable(e: redis::RedisError) -> BusError {
    BusError::Unavailable(format!("redis: {e}"))
}

/// What the subscriber task and the bus share.
struct Subscriptions {
    /// Topics this gateway wants, whether or not Redis is reachable right now.
    topics: Mutex<HashSet<Topic>>,
    /// The live subscription connection, if any. Held while (re)subscribing so a topic is
    /// never missed between a snapshot of `topics` and the new connection.
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
}

pub struct RedisBus {
    publisher: ConnectionManager,
    subscriptions: Arc<Subscriptions>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    subscriber: JoinHandle<()>,
}

impl RedisBus {
    /// Connects to `url` for publishing and starts the subscriber (which reconnects by itself).
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let publisher = client.get_connection_manager().await.map_err(unavailable)?;
        let subscriptions = Arc::new(Subscriptions {
            topics: Mutex::new(HashSet::new()),
            sink: tokio::sync::Mutex::new(None),
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let subscriber = tokio::spawn(subscribe_forever(
            client,
            subscriptions.clone(),
            events_tx,
            ready_tx,
        ));
        // Start once the first subscription connection is up, so early subscribes take effect.
        let _ = ready_rx.await;
        Ok(Self {
            publisher,
            subscriptions,
            events_rx: Mutex::new(Some(events_rx)),
            subscriber,
        })
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// Keeps a subscription connection up: connect, subscribe to every wanted topic, forward
/// messages; on loss, back off and do it again, then ask for a resync.
async fn subscribe_forever(
    client: redis::Client,
    subscriptions: Arc<Subscriptions>,
    events: mpsc::UnboundedSender<Event>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            let mut current = subscriptions.sink.lock().await;
            let topics: Vec<Topic> = subscriptions
                .topics
                .lock()
                .expect("topics lock")
                .iter()
                .cloned()
                .collect();
            for topic in &topics {
                sink.subscribe(channel(topic)).await?;
            }
            *current = Some(sink);
            Ok::<_, redis::RedisError>(stream)
        }
        .await;
        match connected {
            Ok(mut stream) => {
                backoff = Duration::from_millis(100);
                match ready.take() {
                    Some(ready) => {
                        let _ = ready.send(());
                    }
                    // Anything published while we were away was missed: catch up from the log.
                    None => {
                        tracing::info!("redis subscriptions restored; catching connections up");
                        let _ = events.send(Event::Resync);
                    }
                }
                while let Some(message) = stream.next().await {
                    match Event::decode(bytes::Bytes::copy_from_slice(message.get_payload_bytes()))
                    {
                        Some(event) => {
                            let _ = events.send(event);
                        }
                        None => tracing::warn!(
                            channel = message.get_channel_name(),
                            "ignoring a malformed bus event"
                        ),
                    }
                }
                *subscriptions.sink.lock().await = None;
                tracing::warn!("redis subscription connection lost; reconnecting");
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "redis subscription connection failed");
                if let Some(ready) = ready.take() {
                    // Start anyway; the topics are subscribed once Redis answers.
                    let _ = ready.send(());
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, topic: Topic, event: Event) -> Result<(), BusError> {
        let Some(payload) = event.encode() else {
            return Ok(());
        };
        let mut publisher = self.publisher.clone();
        publisher
            .publish::<_, _, ()>(channel(&topic), payload.as_ref())
            .await
            .map_err(unavailable)
    }

    async fn subscribe(&self, topic: Topic) -> Result<(), BusError> {
        let mut sink = self.subscriptions.sink.lock().await;
        self.subscriptions
            .topics
            .lock()
            .expect("topics lock")
            .insert(topic.clone());
        match sink.as_mut() {
            Some(sink) => sink.subscribe(channel(&topic)).await.map_err(unavailable),
            // Subscribed on reconnect, followed by a resync.
            None => Ok(()),
        }
    }

    async fn unsubscribe(&self, topic: Topic) -> Result<(), BusError> {
        let mut sink = self.subscriptions.sink.lock().await;
        self.subscriptions
            .topics
            .lock()
            .expect("topics lock")
            .remove(&topic);
        match sink.as_mut() {
            Some(sink) => sink.unsubscribe(channel(&topic)).await.map_err(unavailable),
            None => Ok(()),
        }
    }

    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.events_rx.lock().expect("bus lock").take()
    }
}
