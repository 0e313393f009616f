//! The bus on Redis pub/sub: one channel per group (`chat:{g:GROUP}:events`) and per user
//! (`chat:{u:USER}:events`). A gateway subscribes to a channel only while it holds a local
//! connection that cares, so Redis routes each message to the gateways that need it and
//! no key anywhere says who is online where. On a Cluster the channels are sharded
//! (`SSUBSCRIBE`/`SPUBLISH`): a group's traffic stays on the shard holding its keys.
//!
//! Pub/sub delivers at most once. When the subscription connection drops (or stops
//! answering the heartbeat), the bus reconnects with backoff, subscribes again to every
//! topic, and raises [`Event::Resync`]: the node then catches every local connection up
//! from the log.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Bus, BusError, Event, Topic};
use crate::redis_target::{PushConnection, RedisConnection, RedisTarget};

/// How often the subscription connection is pinged, to notice one that died silently.
const HEARTBEAT: Duration = Duration::from_secs(2);

fn channel(topic: &Topic) -> String {
    match topic {
        Topic::Group(group) => format!("chat:{{g:{group}}}:events"),
        Topic::User(user) => format!("chat:{{u:{user}}}:events"),
        Topic::Gateway(gateway) => format!("chat:{{gw:{gateway}}}:events"),
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
    link: tokio::sync::Mutex<Option<PushConnection>>,
}

pub struct RedisBus {
    publisher: RedisConnection,
    subscriptions: Arc<Subscriptions>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    subscriber: JoinHandle<()>,
}

impl RedisBus {
    /// Connects for publishing and starts the subscriber (which reconnects by itself).
    pub async fn connect(target: &RedisTarget) -> Result<Self, BusError> {
        let publisher = target.connect().await.map_err(unavailable)?;
        let subscriptions = Arc::new(Subscriptions {
            topics: Mutex::new(HashSet::new()),
            link: tokio::sync::Mutex::new(None),
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let subscriber = tokio::spawn(subscribe_forever(
            target.clone(),
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
    target: RedisTarget,
    subscriptions: Arc<Subscriptions>,
    events: mpsc::UnboundedSender<Event>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    loop {
        let (pushes_tx, mut pushes) = mpsc::unbounded_channel();
        let connected = async {
            let mut link = target.connect_pushes(pushes_tx).await?;
            let mut current = subscriptions.link.lock().await;
            let topics: Vec<Topic> = subscriptions
                .topics
                .lock()
                .expect("topics lock")
                .iter()
                .cloned()
                .collect();
            for topic in &topics {
                link.subscribe(&channel(topic)).await?;
            }
            *current = Some(link);
            Ok::<_, redis::RedisError>(())
        }
        .await;
        match connected {
            Ok(()) => {
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
                forward_until_lost(&subscriptions, &mut pushes, &events).await;
                *subscriptions.link.lock().await = None;
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

/// Forwards published events until the connection reports its loss or misses a heartbeat.
async fn forward_until_lost(
    subscriptions: &Subscriptions,
    pushes: &mut mpsc::UnboundedReceiver<PushInfo>,
    events: &mpsc::UnboundedSender<Event>,
) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                None => return,
                Some(push) if push.kind == PushKind::Disconnection => return,
                Some(push) if matches!(push.kind, PushKind::Message | PushKind::SMessage) => {
                    match published_event(push) {
                        Some(event) => {
                            let _ = events.send(event);
                        }
                        None => tracing::warn!("ignoring a malformed bus event"),
                    }
                }
                // Subscription confirmations.
                Some(_) => {}
            },
            _ = heartbeat.tick() => {
                let alive = match subscriptions.link.lock().await.as_mut() {
                    Some(link) => link.ping().await.is_ok(),
                    None => false,
                };
                if !alive {
                    return;
                }
            }
        }
    }
}

/// The event in a `message`/`smessage` push: `[channel, payload]`.
fn published_event(push: PushInfo) -> Option<Event> {
    match push.data.into_iter().nth(1)? {
        Value::BulkString(payload) => Event::decode(Bytes::from(payload)),
        _ => None,
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, topic: Topic, event: Event) -> Result<(), BusError> {
        let Some(payload) = event.encode() else {
            return Ok(());
        };
        self.publisher
            .clone()
            .publish(&channel(&topic), payload.as_ref())
            .await
            .map_err(unavailable)
    }

    async fn subscribe(&self, topic: Topic) -> Result<(), BusError> {
        let mut link = self.subscriptions.link.lock().await;
        self.subscriptions
            .topics
            .lock()
            .expect("topics lock")
            .insert(topic.clone());
        match link.as_mut() {
            Some(link) => link.subscribe(&channel(&topic)).await.map_err(unavailable),
            // Subscribed on reconnect, followed by a resync.
            None => Ok(()),
        }
    }

    async fn unsubscribe(&self, topic: Topic) -> Result<(), BusError> {
        let mut link = self.subscriptions.link.lock().await;
        self.subscriptions
            .topics
            .lock()
            .expect("topics lock")
            .remove(&topic);
        match link.as_mut() {
            Some(link) => link
                .unsubscribe(&channel(&topic))
                .await
                .map_err(unavailable),
            None => Ok(()),
        }
    }

    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.events_rx.lock().expect("bus lock").take()
    }
}
