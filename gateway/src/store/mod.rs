//! The group store: groups, members with their join watermarks, the per-group message
//! logs and delivery cursors. Read diffusion: a message is stored once, in its group's log.
//!
//! [`Store`] is the seam between the gateway and its storage engine; [`EmbeddedStore`]
//! (redb, one node) is the default.

mod embedded;
mod metered;
mod redis;

pub use embedded::EmbeddedStore;
pub use metered::{Metered, StoreMetrics};
pub use redis::RedisStore;

use async_trait::async_trait;
use bytes::Bytes;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("group {0} already exists")]
    GroupExists(String),
    #[error("no group {0}")]
    NoSuchGroup(String),
    /// The storage engine failed; the operation had no effect and may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// A group's header: who owns it and where its log stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub owner: String,
    pub created_ms: u64,
    /// Sequence number of the latest message; 0 while the log is empty.
    pub head_seq: u64,
    /// Time of the latest message, or of creation.
    pub last_ts_ms: u64,
}

/// One user's membership of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub group: String,
    pub user: String,
    pub owner: bool,
    /// The group's head when the user joined: they never see this seq or earlier ones.
    pub joined_seq: u64,
}

/// One device's cursor advances: user, device, (group, seq) pairs.
pub type CursorAdvance = (String, String, Vec<(String, u64)>);

/// A message to append to a group's log.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub group: String,
    pub sender: String,
    /// Client-chosen id: a retried send with the same (group, sender, msg_id) is stored once.
    pub msg_id: String,
    pub body: Bytes,
    pub ts_ms: u64,
    /// Only these users (and the sender) may see it; `None` for the whole group.
    pub visible_to: Option<Vec<String>>,
}

/// A message as stored in a group's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub group: String,
    pub seq: u64,
    pub sender: String,
    pub ts_ms: u64,
    pub body: Bytes,
    /// Only these users (and the sender) may see it; `None` for the whole group.
    pub visible_to: Option<Vec<String>>,
}

impl StoredMessage {
    /// Whether `user` may see this message. The gateway checks this itself on every read
    /// and push, whatever plugins are loaded: private stays private.
    pub fn visible_to(&self, user: &str) -> bool {
        self.sender == user
            || self
                .visible_to
                .as_ref()
                .is_none_or(|to| to.iter().any(|u| u == user))
    }
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub ts_ms: u64,
    /// True when the msg_id was seen before: nothing was written, the first seq is returned.
    pub duplicate: bool,
}

/// A window of a group's log: seqs strictly between `after` and `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub after: u64,
    pub before: u64,
}

/// Where one user's unread count of one group stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadState {
    pub group: String,
    /// Messages after `read_seq` and up to `counted_seq` the user may see and did not send.
    pub count: u64,
    /// The user's read marker (0: nothing marked read).
    pub read_seq: u64,
    /// Every message up to here is counted, for every member (see [`Store::count_unread`]).
    pub counted_seq: u64,
    pub head_seq: u64,
}

/// One user's offline buffer as a device sees it on connect: references only, never
/// bodies. Each entry is a group that got messages for the user and the latest seq
/// referenced (seqs are gapless, so with the device's cursor it names every message it
/// lacks). Entries carry a per-user *position*, bumped on every write; the buffer keeps
/// the `capacity` most recently written groups and evicts the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfflineBuffer {
    /// (group, latest seq referenced), in no particular order.
    pub entries: Vec<(String, u64)>,
    /// Position of the latest write (0: never written).
    pub head: u64,
    /// Position of the latest entry evicted by the cap (0: none).
    pub evicted: u64,
    /// The device had every message referenced at or before this position (0: unknown).
    pub synced: u64,
}

impl OfflineBuffer {
    /// Whether the buffer still names every group this device may lack: nothing was
    /// evicted past the point the device was known to be in sync.
    pub fn covers_device(&self) -> bool {
        self.evicted <= self.synced
    }
}

/// Which end of a [`SeqRange`] a page is taken from; pages are always returned in ascending order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFrom {
    Oldest,
    Newest,
}

/// Storage behind the gateway. Implementations are shared by every connection of a node
/// (and, for networked stores, by every node), so each method is one atomic step.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a group owned by `owner`, with `owner` and `members` joined at seq 0.
    async fn create_group(
        &self,
        group: &str,
        owner: &str,
        members: &[String],
        now_ms: u64,
    ) -> Result<(), StoreError>;

    async fn group(&self, group: &str) -> Result<Option<GroupInfo>, StoreError>;

    /// Adds users at the group's current head; returns the memberships created (users
    /// already in the group are left as they are and not returned).
    async fn add_members(
        &self,
        group: &str,
        users: &[String],
    ) -> Result<Vec<Membership>, StoreError>;

    /// Removes users; returns those who were members.
    async fn remove_members(
        &self,
        group: &str,
        users: &[String],
    ) -> Result<Vec<String>, StoreError>;

    async fn membership(&self, group: &str, user: &str) -> Result<Option<Membership>, StoreError>;

    /// Members ordered by user id, starting after `after` ("" for the first page).
    async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Membership>, StoreError>;

    /// Every group `user` belongs to.
    async fn groups_of(&self, user: &str) -> Result<Vec<Membership>, StoreError>;

    /// Every group `user` belongs to with its header (head seq, latest time): the
    /// conversation list, read from per-group heads in one round trip.
    async fn conversations(&self, user: &str) -> Result<Vec<(Membership, GroupInfo)>, StoreError>;

    /// Appends to the group's log with the next seq (gapless), or returns the earlier
    /// result for a repeated (group, sender, msg_id). A private message is indexed for its
    /// recipients only: one index entry per recipient, none for everybody else.
    async fn append(&self, message: NewMessage) -> Result<Appended, StoreError>;

    /// Appends several messages in order, each as `append` would (a refused one does not
    /// stop the rest), in as few steps as the store can: one transaction and one fsync
    /// on the embedded store. `Err` only when the whole batch failed, storing nothing.
    async fn append_batch(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            results.push(self.append(message).await);
        }
        Ok(results)
    }

    /// Up to `limit` messages of `range`, ascending by seq.
    async fn messages(
        &self,
        group: &str,
        range: SeqRange,
        from: PageFrom,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// The highest seq each of the user's devices acknowledged, per group.
    async fn cursors(&self, user: &str, device: &str) -> Result<Vec<(String, u64)>, StoreError>;

    /// A plugin's value for `key`, in that plugin's own namespace.
    async fn plugin_get(&self, plugin: &str, key: &str) -> Result<Option<Bytes>, StoreError>;

    async fn plugin_set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), StoreError>;

    async fn plugin_delete(&self, plugin: &str, key: &str) -> Result<(), StoreError>;

    /// Advances the cursors of many devices at once: `(user, device, cursors)` each, never
    /// one backwards. The embedded store writes them in one transaction, Redis in a few
    /// script calls.
    async fn advance_cursors_batch(&self, batch: &[CursorAdvance]) -> Result<(), StoreError>;

    /// Up to where `group`'s messages are counted in its members' unread counts.
    async fn counted_seq(&self, group: &str) -> Result<u64, StoreError>;

    /// Counts `group`'s messages `from + 1 ..= to`: adds each `(user, k)` to that user's
    /// unread count and moves the counted seq from `from` to `to`, as one atomic step,
    /// and only if it is still `from` — so each message is counted exactly once whoever
    /// (and however often) tries. Returns the users' new counts, or `None` if the range
    /// was counted already.
    async fn count_unread(
        &self,
        group: &str,
        from: u64,
        to: u64,
        increments: &[(String, u64)],
    ) -> Result<Option<Vec<(String, u64)>>, StoreError>;

    /// Sets `user`'s read marker of `group` and their count as computed for it, if the
    /// group is still counted up to `counted` (`false` otherwise: recompute and retry).
    async fn mark_read(
        &self,
        group: &str,
        user: &str,
        read_seq: u64,
        count: u64,
        counted: u64,
    ) -> Result<bool, StoreError>;

    /// `user`'s unread state in every group they belong to, ordered by group.
    async fn unread(&self, user: &str) -> Result<Vec<UnreadState>, StoreError>;

    /// Adds references to the offline buffers of these users: `(user, latest seq)` of
    /// `group`, keeping each user's `capacity` most recently written groups. A reference
    /// to the group a user's buffer was last written for stays at its position (only its
    /// seq moves) unless one of the user's devices synced at that position: a busy group
    /// costs one write per member and flush, not three.
    async fn buffer_offline(
        &self,
        group: &str,
        refs: &[(String, u64)],
        capacity: usize,
    ) -> Result<(), StoreError>;

    /// `user`'s offline buffer, with where `device` was last in sync, in one atomic read.
    async fn offline(&self, user: &str, device: &str) -> Result<OfflineBuffer, StoreError>;

    /// Records that `device` had every message referenced up to `position`.
    async fn offline_synced(
        &self,
        user: &str,
        device: &str,
        position: u64,
    ) -> Result<(), StoreError>;

    /// `user`'s read marker in `group` (0 if none).
    async fn read_marker(&self, group: &str, user: &str) -> Result<u64, StoreError>;

    /// Registers `gateway` as live until `now_ms + ttl_ms` and returns every gateway live
    /// at `now_ms` (itself included). A single-node store knows only the caller.
    async fn live_gateways(
        &self,
        gateway: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Vec<String>, StoreError>;
}
