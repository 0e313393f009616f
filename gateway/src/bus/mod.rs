//! The bus carries events between gateways: a group's messages on the group's topic,
//! membership changes on the affected user's topic. A gateway subscribes to a topic only
//! while it holds a local connection that cares, so no table of who is online where
//! exists anywhere. [`LocalBus`] serves a single node.

mod codec;
mod local;
mod redis;

pub use local::LocalBus;
pub use redis::RedisBus;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Where an event is published.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Messages of one group. Never carries the member list.
    Group(String),
    /// Membership changes concerning one user.
    User(String),
    /// Work for one gateway (groups whose unread counts it owns).
    Gateway(String),
}

/// What travels on the bus.
#[derive(Debug, Clone)]
pub enum Event {
    /// A message appended to `group`'s log, already encoded as a `Push` frame: encoded
    /// once by the sending gateway, the same bytes reach every recipient.
    Message {
        group: String,
        seq: u64,
        push: Bytes,
        /// Set for a message only some members may see; the others get the placeholder.
        private: Option<PrivateDelivery>,
    },
    /// `user` joined `group`; they see messages after `joined_seq`.
    Joined {
        group: String,
        user: String,
        joined_seq: u64,
    },
    /// `user` left or was removed from `group`.
    Left { group: String, user: String },
    /// New unread counts of `group` for these users (a flush, or one user's read marker);
    /// the group is counted, and in its members' offline buffers, up to `counted`.
    Unread {
        group: String,
        counted: u64,
        counts: Vec<(String, u64)>,
    },
    /// These groups have messages to count: sent to the gateway that owns their counts.
    Uncounted { groups: Vec<String> },
    /// The bus lost events (a reconnect): every local connection catches up from the log.
    Resync,
}

/// Who may see a private message, and what everybody else receives instead.
#[derive(Debug, Clone)]
pub struct PrivateDelivery {
    pub sender: String,
    pub visible_to: Vec<String>,
    /// The encoded placeholder push (same seq, no sender, no body).
    pub placeholder: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Publish/subscribe between gateways. Delivery is at most once: a receiver detects a
/// missed message by its gapless seq and reads it from the store.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, topic: Topic, event: Event) -> Result<(), BusError>;
    async fn subscribe(&self, topic: Topic) -> Result<(), BusError>;
    async fn unsubscribe(&self, topic: Topic) -> Result<(), BusError>;
    /// The stream of events on subscribed topics; taken once, by the node.
    fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Event>>;
}
