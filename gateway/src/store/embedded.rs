//! The default store: redb, an embedded, crash-safe B-tree database in one file under the
//! data directory. Every write is one durable transaction, so an acknowledged send
//! survives a crash and seqs continue without a gap after a restart.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    Appended, CursorAdvance, GroupInfo, Membership, NewMessage, OfflineBuffer, PageFrom, SeqRange,
    Store, StoreError, StoredMessage, UnreadState,
};

/// group → (owner, created_ms, head_seq, last_ts_ms)
const GROUPS: TableDefinition<&str, (&str, u64, u64, u64)> = TableDefinition::new("groups");
/// (group, user) → (owner, joined_seq)
const MEMBERS: TableDefinition<(&str, &str), (bool, u64)> = TableDefinition::new("members");
/// (user, group) → (owner, joined_seq): the same facts, keyed for "my groups".
const USER_GROUPS: TableDefinition<(&str, &str), (bool, u64)> = TableDefinition::new("user_groups");
/// (group, seq) → (sender, ts_ms, body): the group log, each message stored once.
const MESSAGES: TableDefinition<(&str, u64), (&str, u64, &[u8])> = TableDefinition::new("messages");
/// (group, seq) → recipients, comma-separated: the private messages of each group log.
const PRIVATE: TableDefinition<(&str, u64), &str> = TableDefinition::new("private");
/// (user, group, seq) → (): the private messages each user may see, written for the
/// recipients only (a notice to one member of a huge group is one entry).
const PRIVATE_INDEX: TableDefinition<(&str, &str, u64), ()> = TableDefinition::new("private_index");
/// (plugin, key) → value: each plugin's own key-value namespace.
const PLUGIN_KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("plugin_kv");
/// (group, sender, msg_id) → seq: makes retried sends idempotent.
const MSG_IDS: TableDefinition<(&str, &str, &str), u64> = TableDefinition::new("msg_ids");
/// (user, device, group) → highest acknowledged seq.
const CURSORS: TableDefinition<(&str, &str, &str), u64> = TableDefinition::new("cursors");
/// (group, user) → (unread count, read marker).
const UNREAD: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("unread");
/// group → the seq up to which its messages are in the unread counts.
const COUNTED: TableDefinition<&str, u64> = TableDefinition::new("counted");

/// (user, group) → (latest seq referenced, position): each user's offline buffer.
const OFFLINE: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("offline");
/// (user, position) → group: the same entries in write order, to evict the oldest.
const OFFLINE_ORDER: TableDefinition<(&str, u64), &str> = TableDefinition::new("offline_order");
/// user → (head position, evicted position, entries).
const OFFLINE_HEAD: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("offline_head");
/// (user, device) → the position up to which the device had everything.
const OFFLINE_SYNCED: TableDefinition<(&str, &str), u64> = TableDefinition::new("offline_synced");

/// redb-backed [`Store`] for a single node.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl EmbeddedStore {
    /// Opens (or creates) `<dir>/store.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        let db = Database::create(dir.join("store.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(GROUPS)?;
        tx.open_table(MEMBERS)?;
        tx.open_table(USER_GROUPS)?;
        tx.open_table(MESSAGES)?;
        tx.open_table(MSG_IDS)?;
        tx.open_table(CURSORS)?;
        tx.open_table(PRIVATE)?;
        tx.open_table(PRIVATE_INDEX)?;
        tx.open_table(PLUGIN_KV)?;
        tx.open_table(UNREAD)?;
        tx.open_table(COUNTED)?;
        tx.open_table(OFFLINE)?;
        tx.open_table(OFFLINE_ORDER)?;
        tx.open_table(OFFLINE_HEAD)?;
        tx.open_table(OFFLINE_SYNCED)?;
        tx.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs blocking database work off the async runtime's worker threads.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

/// Appends `m` inside `tx`. A refused message (no such group) writes nothing; any other
/// error leaves `tx` half-written, to be dropped.
fn append_in(tx: &redb::WriteTransaction, m: &NewMessage) -> Result<Appended, StoreError> {
    let mut ids = tx.open_table(MSG_IDS)?;
    let id_key = (m.group.as_str(), m.sender.as_str(), m.msg_id.as_str());
    if let Some(seq) = ids.get(id_key)? {
        let seq = seq.value();
        let ts_ms = tx
            .open_table(MESSAGES)?
            .get((m.group.as_str(), seq))?
            .map_or(m.ts_ms, |v| v.value().1);
        return Ok(Appended {
            seq,
            ts_ms,
            duplicate: true,
        });
    }
    let mut groups = tx.open_table(GROUPS)?;
    let (owner, created, head) = match groups.get(m.group.as_str())? {
        Some(g) => {
            let (owner, created, head, _) = g.value();
            (owner.to_owned(), created, head)
        }
        None => return Err(StoreError::NoSuchGroup(m.group.clone())),
    };
    let seq = head + 1;
    groups.insert(m.group.as_str(), (owner.as_str(), created, seq, m.ts_ms))?;
    tx.open_table(MESSAGES)?.insert(
        (m.group.as_str(), seq),
        (m.sender.as_str(), m.ts_ms, &m.body[..]),
    )?;
    ids.insert(id_key, seq)?;
    if let Some(to) = &m.visible_to {
        tx.open_table(PRIVATE)?
            .insert((m.group.as_str(), seq), to.join(",").as_str())?;
        let mut index = tx.open_table(PRIVATE_INDEX)?;
        for user in to {
            index.insert((user.as_str(), m.group.as_str(), seq), ())?;
        }
    }
    Ok(Appended {
        seq,
        ts_ms: m.ts_ms,
        duplicate: false,
    })
}

/// Whether one of `user`'s devices recorded a sync point at `position` or later.
fn synced_at(
    synced: &impl ReadableTable<(&'static str, &'static str), u64>,
    user: &str,
    position: u64,
) -> Result<bool, StoreError> {
    for entry in synced.range((user, "")..)? {
        let (key, at) = entry?;
        if key.value().0 != user {
            break;
        }
        if at.value() >= position {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A write transaction that skips the fsync: for state derived from the durable log or
/// safe to lose (the next durable commit persists it, in order).
fn begin_unsynced_write(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::None)
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    Ok(tx)
}

fn membership(group: &str, user: &str, (owner, joined_seq): (bool, u64)) -> Membership {
    Membership {
        group: group.to_owned(),
        user: user.to_owned(),
        owner,
        joined_seq,
    }
}

fn group_info((owner, created_ms, head_seq, last_ts_ms): (&str, u64, u64, u64)) -> GroupInfo {
    GroupInfo {
        owner: owner.to_owned(),
        created_ms,
        head_seq,
        last_ts_ms,
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_group(
        &self,
        group: &str,
        owner: &str,
        members: &[String],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let (group, owner, members) = (group.to_owned(), owner.to_owned(), members.to_vec());
        self.run(move |db| {
            let tx = db.begin_write()?;
            {
                let mut groups = tx.open_table(GROUPS)?;
                if groups.get(group.as_str())?.is_some() {
                    return Err(StoreError::GroupExists(group));
                }
                groups.insert(group.as_str(), (owner.as_str(), now_ms, 0, now_ms))?;
                let mut by_group = tx.open_table(MEMBERS)?;
                let mut by_user = tx.open_table(USER_GROUPS)?;
                for user in std::iter::once(&owner).chain(members.iter()) {
                    let value = (*user == owner, 0);
                    by_group.insert((group.as_str(), user.as_str()), value)?;
                    by_user.insert((user.as_str(), group.as_str()), value)?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn group(&self, group: &str) -> Result<Option<GroupInfo>, StoreError> {
        let group = group.to_owned();
        self.run(move |db| {
            let tx = db.begin_read()?;
            let groups = tx.open_table(GROUPS)?;
            Ok(groups.get(group.as_str())?.map(|g| group_info(g.value())))
        })
        .await
    }

    async fn add_members(
        &self,
        group: &str,
        users: &[String],
    ) -> Result<Vec<Membership>, StoreError> {
        let (group, users) = (group.to_owned(), users.to_vec());
        self.run(move |db| {
            let tx = db.begin_write()?;
            let mut added = Vec::new();
            {
                let groups = tx.open_table(GROUPS)?;
                let head = match groups.get(group.as_str())? {
                    Some(g) => g.value().2,
                    None => return Err(StoreError::NoSuchGroup(group)),
                };
                let mut by_group = tx.open_table(MEMBERS)?;
                let mut by_user = tx.open_table(USER_GROUPS)?;
                for user in &users {
                    if by_group.get((group.as_str(), user.as_str()))?.is_some() {
                        continue;
                    }
                    by_group.insert((group.as_str(), user.as_str()), (false, head))?;
                    by_user.insert((user.as_str(), group.as_str()), (false, head))?;
                    added.push(membership(&group, user, (false, head)));
                }
            }
            tx.commit()?;
            Ok(added)
        })
        .await
    }

    async fn remove_members(
        &self,
        group: &str,
        users: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let (group, users) = (group.to_owned(), users.to_vec());
        self.run(move |db| {
            let tx = db.begin_write()?;
            let mut removed = Vec::new();
            {
                if tx.open_table(GROUPS)?.get(group.as_str())?.is_none() {
                    return Err(StoreError::NoSuchGroup(group));
                }
                let mut by_group = tx.open_table(MEMBERS)?;
                let mut by_user = tx.open_table(USER_GROUPS)?;
                for user in users {
                    if by_group.remove((group.as_str(), user.as_str()))?.is_some() {
                        by_user.remove((user.as_str(), group.as_str()))?;
                        removed.push(user);
                    }
                }
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn membership(&self, group: &str, user: &str) -> Result<Option<Membership>, StoreError> {
        let (group, user) = (group.to_owned(), user.to_owned());
        self.run(move |db| {
            let tx = db.begin_read()?;
            let by_group = tx.open_table(MEMBERS)?;
            Ok(by_group
                .get((group.as_str(), user.as_str()))?
                .map(|v| membership(&group, &user, v.value())))
        })
        .await
    }

    async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Membership>, StoreError> {
        let (group, after) = (group.to_owned(), after.to_owned());
        self.run(move |db| {
            let tx = db.begin_read()?;
            let by_group = tx.open_table(MEMBERS)?;
            let start = (group.as_str(), after.as_str());
            let mut out = Vec::new();
            for entry in
                by_group.range::<(&str, &str)>((Bound::Excluded(start), Bound::Unbounded))?
            {
                let (key, value) = entry?;
                let (g, user) = key.value();
                if g != group || out.len() >= limit {
                    break;
                }
                out.push(membership(g, user, value.value()));
            }
            Ok(out)
        })
        .await
    }

    async fn groups_of(&self, user: &str) -> Result<Vec<Membership>, StoreError> {
        let user = user.to_owned();
        self.run(move |db| {
            let tx = db.begin_read()?;
            let by_user = tx.open_table(USER_GROUPS)?;
            let mut out = Vec::new();
            for entry in by_user.range::<(&str, &str)>((user.as_str(), "")..)? {
                let (key, value) = entry?;
                let (u, group) = key.value();
                if u != user {
                    break;
                }
                out.push(membership(group, u, value.value()));
            }
            Ok(out)
        })
        .await
    }

    async fn conversations(&self, user: &str) -> Result<Vec<(Membership, GroupInfo)>, StoreError> {
        let memberships = self.groups_of(user).await?;
        self.run(move |db| {
            let tx = db.begin_read()?;
            let groups = tx.open_table(GROUPS)?;
            let mut out = Vec::with_capacity(memberships.len());
            for m in memberships {
                if let Some(g) = groups.get(m.group.as_str())? {
                    let info = group_info(g.value());
                    out.push((m, info));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        let mut results = self.append_batch(vec![m]).await?;
        results.pop().expect("one result per message")
    }

    /// One write transaction and one fsync for the whole batch: what makes a sender's
    /// pipelined messages (and everyone's, when they arrive together) cheap to store.
    async fn append_batch(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        self.run(move |db| {
            let tx = db.begin_write()?;
            let mut results = Vec::with_capacity(messages.len());
            for m in &messages {
                match append_in(&tx, m) {
                    Err(StoreError::NoSuchGroup(group)) => {
                        results.push(Err(StoreError::NoSuchGroup(group)))
                    }
                    // Anything else may have left the transaction half-written: none of it commits.
                    Err(error) => return Err(error),
                    Ok(appended) => results.push(Ok(appended)),
                }
            }
            tx.commit()?;
            Ok(results)
        })
        .await
    }

    async fn messages(
        &self,
        group: &str,
        range: SeqRange,
        from: PageFrom,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let group = group.to_owned();
        self.run(move |db| {
            let tx = db.begin_read()?;
            let log = tx.open_table(MESSAGES)?;
            if range.before <= range.after.saturating_add(1) {
                return Ok(Vec::new());
            }
            let entries =
                log.range((group.as_str(), range.after + 1)..(group.as_str(), range.before))?;
            let decode = |entry: Result<
                (
                    redb::AccessGuard<(&str, u64)>,
                    redb::AccessGuard<(&str, u64, &[u8])>,
                ),
                redb::StorageError,
            >| {
                let (key, value) = entry?;
                let (sender, ts_ms, body) = value.value();
                Ok::<_, StoreError>(StoredMessage {
                    group: group.clone(),
                    seq: key.value().1,
                    sender: sender.to_owned(),
                    ts_ms,
                    body: Bytes::copy_from_slice(body),
                    visible_to: None,
                })
            };
            let mut page = match from {
                PageFrom::Oldest => entries
                    .take(limit)
                    .map(decode)
                    .collect::<Result<Vec<_>, _>>()?,
                PageFrom::Newest => entries
                    .rev()
                    .take(limit)
                    .map(decode)
                    .collect::<Result<Vec<_>, _>>()?,
            };
            if from == PageFrom::Newest {
                page.reverse();
            }
            if let (Some(first), Some(last)) = (page.first(), page.last()) {
                let private = tx.open_table(PRIVATE)?;
                for entry in
                    private.range((group.as_str(), first.seq)..=(group.as_str(), last.seq))?
                {
                    let (key, to) = entry?;
                    let seq = key.value().1;
                    if let Some(m) = page.iter_mut().find(|m| m.seq == seq) {
                        m.visible_to = Some(to.value().split(',').map(str::to_owned).collect());
                    }
                }
            }
            Ok(page)
        })
        .await
    }

    async fn plugin_get(&self, plugin: &str, key: &str) -> Result<Option<Bytes>, StoreError> {
        let (plugin, key) = (plugin.to_owned(), key.to_owned());
        self.run(move |db| {
            let tx = db.begin_read()?;
            let kv = tx.open_table(PLUGIN_KV)?;
            Ok(kv
                .get((plugin.as_str(), key.as_str()))?
                .map(|v| Bytes::copy_from_slice(v.value())))
        })
        .await
    }

    async fn plugin_set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (plugin, key, value) = (plugin.to_owned(), key.to_owned(), value.to_vec());
        self.run(move |db| {
            let tx = db.begin_write()?;
            tx.open_table(PLUGIN_KV)?
                .insert((plugin.as_str(), key.as_str()), &value[..])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn plugin_delete(&self, plugin: &str, key: &str) -> Result<(), StoreError> {
        let (plugin, key) = (plugin.to_owned(), key.to_owned());
        self.run(move |db| {
            let tx = db.begin_write()?;
            tx.open_table(PLUGIN_KV)?
                .remove((plugin.as_str(), key.as_str()))?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn cursors(&self, user: &str, device: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let (user, device) = (user.to_owned(), device.to_owned());
        self.run(move |db| {
            let tx = db.begin_read()?;
            let cursors = tx.open_table(CURSORS)?;
            let mut out = Vec::new();
            for entry in
                cursors.range::<(&str, &str, &str)>((user.as_str(), device.as_str(), "")..)?
            {
                let (key, value) = entry?;
                let (u, d, group) = key.value();
                if u != user || d != device {
                    break;
                }
                out.push((group.to_owned(), value.value()));
            }
            Ok(out)
        })
        .await
    }

    async fn advance_cursors_batch(&self, batch: &[CursorAdvance]) -> Result<(), StoreError> {
        let batch = batch.to_vec();
        self.run(move |db| {
            // In key order: neighbouring inserts touch the same B-tree pages.
            let mut keys: Vec<((&str, &str, &str), u64)> = batch
                .iter()
                .flat_map(|(user, device, updates)| {
                    updates.iter().map(move |(group, seq)| {
                        ((user.as_str(), device.as_str(), group.as_str()), *seq)
                    })
                })
                .collect();
            keys.sort_unstable();
            let tx = begin_unsynced_write(db)?;
            // A lost cursor advance only means a redelivery the client drops as a duplicate,
            // so cursors skip the fsync; the next durable commit persists them.
            {
                let mut cursors = tx.open_table(CURSORS)?;
                for &(key, seq) in &keys {
                    // One traversal when the cursor advances (nearly always); a second puts
                    // a newer cursor back.
                    let previous = cursors.insert(key, seq)?.map(|v| v.value());
                    if let Some(previous) = previous.filter(|&p| p > seq) {
                        cursors.insert(key, previous)?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn counted_seq(&self, group: &str) -> Result<u64, StoreError> {
        let group = group.to_owned();
        self.run(move |db| {
            let tx = db.begin_read()?;
            let counted = tx.open_table(COUNTED)?;
            Ok(counted.get(group.as_str())?.map_or(0, |v| v.value()))
        })
        .await
    }

    async fn count_unread(
        &self,
        group: &str,
        from: u64,
        to: u64,
        increments: &[(String, u64)],
    ) -> Result<Option<Vec<(String, u64)>>, StoreError> {
        let (group, increments) = (group.to_owned(), increments.to_vec());
        self.run(move |db| {
            let tx = begin_unsynced_write(db)?;
            // Counts are derived from the durable log: a lost flush is rolled back whole
            // (counts and counted seq together) and recounted, so it skips the fsync.
            let mut counts = Vec::with_capacity(increments.len());
            {
                let mut counted = tx.open_table(COUNTED)?;
                if counted.get(group.as_str())?.map_or(0, |v| v.value()) != from {
                    return Ok(None);
                }
                counted.insert(group.as_str(), to)?;
                let mut unread = tx.open_table(UNREAD)?;
                for (user, k) in increments {
                    let key = (group.as_str(), user.as_str());
                    let (count, read) = unread.get(key)?.map_or((0, 0), |v| v.value());
                    unread.insert(key, (count + k, read))?;
                    counts.push((user, count + k));
                }
            }
            tx.commit()?;
            Ok(Some(counts))
        })
        .await
    }

    async fn mark_read(
        &self,
        group: &str,
        user: &str,
        read_seq: u64,
        count: u64,
        counted: u64,
    ) -> Result<bool, StoreError> {
        let (group, user) = (group.to_owned(), user.to_owned());
        self.run(move |db| {
            let tx = db.begin_write()?;
            {
                let current = tx.open_table(COUNTED)?;
                if current.get(group.as_str())?.map_or(0, |v| v.value()) != counted {
                    return Ok(false);
                }
                let mut unread = tx.open_table(UNREAD)?;
                unread.insert((group.as_str(), user.as_str()), (count, read_seq))?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn unread(&self, user: &str) -> Result<Vec<UnreadState>, StoreError> {
        let memberships = self.groups_of(user).await?;
        let user = user.to_owned();
        self.run(move |db| {
            let tx = db.begin_read()?;
            let (groups, counted, unread) = (
                tx.open_table(GROUPS)?,
                tx.open_table(COUNTED)?,
                tx.open_table(UNREAD)?,
            );
            let mut out = Vec::with_capacity(memberships.len());
            for m in memberships {
                let Some(info) = groups.get(m.group.as_str())? else {
                    continue;
                };
                let head_seq = info.value().2;
                let counted_seq = counted.get(m.group.as_str())?.map_or(0, |v| v.value());
                let (count, read_seq) = unread
                    .get((m.group.as_str(), user.as_str()))?
                    .map_or((0, 0), |v| v.value());
                out.push(UnreadState {
                    group: m.group,
                    count,
                    read_seq,
                    counted_seq,
                    head_seq,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn buffer_offline(
        &self,
        group: &str,
        refs: &[(String, u64)],
        capacity: usize,
    ) -> Result<(), StoreError> {
        let (group, refs) = (group.to_owned(), refs.to_vec());
        let capacity = capacity.max(1) as u64;
        self.run(move |db| {
            let tx = begin_unsynced_write(db)?;
            // A lost write is superseded by the group's next flush (references name the
            // latest seq), so it skips the fsync like the counts.
            {
                let mut entries = tx.open_table(OFFLINE)?;
                let mut order = tx.open_table(OFFLINE_ORDER)?;
                let mut heads = tx.open_table(OFFLINE_HEAD)?;
                let synced = tx.open_table(OFFLINE_SYNCED)?;
                for (user, seq) in &refs {
                    let user = user.as_str();
                    let (head, mut evicted, mut len) =
                        heads.get(user)?.map_or((0, 0, 0), |v| v.value());
                    let previous = entries.get((user, group.as_str()))?.map(|v| v.value());
                    if let Some((old_seq, old_position)) = previous
                        && old_position == head
                        && !synced_at(&synced, user, head)?
                    {
                        // Already the user's latest write, and no device synced there: the
                        // order stays as it is, only the seq moves (the common case: a busy
                        // group, flushed each tick). Had one synced there, evicting the
                        // entry later must still tell it: the write moves on.
                        entries.insert((user, group.as_str()), (old_seq.max(*seq), head))?;
                        continue;
                    }
                    let position = head + 1;
                    let seq = match previous {
                        Some((old_seq, old_position)) => {
                            order.remove((user, old_position))?;
                            old_seq.max(*seq)
                        }
                        None => {
                            len += 1;
                            *seq
                        }
                    };
                    entries.insert((user, group.as_str()), (seq, position))?;
                    order.insert((user, position), group.as_str())?;
                    while len > capacity {
                        let (oldest, gone) = {
                            let (key, value) = order
                                .range((user, 0)..(user, u64::MAX))?
                                .next()
                                .expect("more entries than the cap")?;
                            (key.value().1, value.value().to_owned())
                        };
                        order.remove((user, oldest))?;
                        entries.remove((user, gone.as_str()))?;
                        evicted = oldest;
                        len -= 1;
                    }
                    heads.insert(user, (position, evicted, len))?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn offline(&self, user: &str, device: &str) -> Result<OfflineBuffer, StoreError> {
        let (user, device) = (user.to_owned(), device.to_owned());
        self.run(move |db| {
            let tx = db.begin_read()?;
            let (entries, heads, synced) = (
                tx.open_table(OFFLINE)?,
                tx.open_table(OFFLINE_HEAD)?,
                tx.open_table(OFFLINE_SYNCED)?,
            );
            let (head, evicted, _) = heads.get(user.as_str())?.map_or((0, 0, 0), |v| v.value());
            let mut buffer = OfflineBuffer {
                head,
                evicted,
                synced: synced
                    .get((user.as_str(), device.as_str()))?
                    .map_or(0, |v| v.value()),
                entries: Vec::new(),
            };
            for entry in entries.range((user.as_str(), "")..)? {
                let (key, value) = entry?;
                let (u, group) = key.value();
                if u != user {
                    break;
                }
                buffer.entries.push((group.to_owned(), value.value().0));
            }
            Ok(buffer)
        })
        .await
    }

    async fn offline_synced(
        &self,
        user: &str,
        device: &str,
        position: u64,
    ) -> Result<(), StoreError> {
        let (user, device) = (user.to_owned(), device.to_owned());
        self.run(move |db| {
            let tx = begin_unsynced_write(db)?;
            // Losing it only makes the next connect more careful (a head scan).
            {
                let mut synced = tx.open_table(OFFLINE_SYNCED)?;
                let key = (user.as_str(), device.as_str());
                if synced.get(key)?.is_none_or(|v| v.value() < position) {
                    synced.insert(key, position)?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn live_gateways(
        &self,
        gateway: &str,
        _now_ms: u64,
        _ttl_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(vec![gateway.to_owned()])
    }

    async fn read_marker(&self, group: &str, user: &str) -> Result<u64, StoreError> {
        let (group, user) = (group.to_owned(), user.to_owned());
        self.run(move |db| {
            let tx = db.begin_read()?;
            let unread = tx.open_table(UNREAD)?;
            Ok(unread
                .get((group.as_str(), user.as_str()))?
                .map_or(0, |v| v.value().1))
        })
        .await
    }
}
