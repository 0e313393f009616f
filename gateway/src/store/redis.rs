//! The store on Redis, for many gateways sharing one deployment.
//!
//! Every key of a group carries the hash tag `{g:GROUP}` and every key of a user
//! `{u:USER}`, so on a Redis Cluster a group's log, head, members and idempotency records
//! live on one slot, and each multi-key step on a group is one Lua script there:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `chat:{g:G}:meta` | hash | owner, created, head, last_ts, counted |
//! | `chat:{g:G}:members` | hash | user → `o:JOINED` (owner) or `m:JOINED` |
//! | `chat:{g:G}:roster` | sorted set | member ids, for paging in id order |
//! | `chat:{g:G}:log` | hash | seq → message (sender, time, body): stored once |
//! | `chat:{g:G}:ids` | hash | `SENDER\0MSG_ID` → `SEQ:TS`: idempotent sends |
//! | `chat:{g:G}:private` | hash | seq → recipients (comma-separated) |
//! | `chat:{g:G}:pidx:U` | set | private seqs U may see: written for recipients only |
//! | `chat:{g:G}:unread` | hash | user → unread count (messages counted up to meta `counted`) |
//! | `chat:{g:G}:read` | hash | user → read marker |
//! | `chat:{u:U}:groups` | hash | group → `o:JOINED` / `m:JOINED` |
//! | `chat:{u:U}:cursors:D` | hash | group → highest acknowledged seq of device D |
//! | `chat:{u:U}:offline` | sorted set | offline buffer: group scored by the position of its latest write |
//! | `chat:{u:U}:offline:seq` | hash | offline buffer: group → latest seq referenced |
//! | `chat:{u:U}:offline:pos` | hash | `head`, `evicted` positions; `synced:D` of each device D |
//! | `chat:{p:P}:kv` | hash | plugin P's key-value store |
//! | `chat:gateways` | sorted set | live gateway ids scored by expiry: who flushes which group's unread counts |
//!
//! Seqs are gapless, so a page of the log is one `HMGET` of known fields.

use std::sync::LazyLock;

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::{join_all, try_join_all};
use redis::{AsyncCommands, Cmd, FromRedisValue, Script};

use crate::redis_target::{RedisConnection, RedisTarget};

use super::{
    Appended, CursorAdvance, GroupInfo, Membership, NewMessage, OfflineBuffer, PageFrom, SeqRange,
    Store, StoreError, StoredMessage, UnreadState,
};

impl From<redis::ParsingError> for StoreError {
    fn from(e: redis::ParsingError) -> Self {
        StoreError::Unavailable(format!("redis reply: {e}"))
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Unavailable(format!("redis: {e}"))
    }
}

/// [`Store`] on a Redis server or Cluster.
#[derive(Clone)]
pub struct RedisStore {
    redis: RedisConnection,
}

/// The fields of a group's meta hash, in `GroupInfo` order.
const META_FIELDS: [&str; 4] = ["owner", "created", "head", "last_ts"];

fn group_key(group: &str, what: &str) -> String {
    format!("chat:{{g:{group}}}:{what}")
}

fn user_key(user: &str, what: &str) -> String {
    format!("chat:{{u:{user}}}:{what}")
}

fn role_value(owner: bool, joined_seq: u64) -> String {
    format!("{}:{joined_seq}", if owner { 'o' } else { 'm' })
}

fn parse_role(group: &str, user: &str, value: &str) -> Result<Membership, StoreError> {
    let (role, joined) = value
        .split_once(':')
        .ok_or_else(|| corrupt("membership", value))?;
    Ok(Membership {
        group: group.to_owned(),
        user: user.to_owned(),
        owner: role == "o",
        joined_seq: joined.parse().map_err(|_| corrupt("membership", value))?,
    })
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Unavailable(format!("redis holds a malformed {what}: {value:?}"))
}

/// A log entry: u16 sender length, sender, u64 time, body.
fn encode_entry(sender: &str, ts_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::with_capacity(10 + sender.len() + body.len());
    buf.put_u16(sender.len() as u16);
    buf.put_slice(sender.as_bytes());
    buf.put_u64(ts_ms);
    buf.put_slice(body);
    buf.to_vec()
}

fn decode_entry(group: &str, seq: u64, raw: Vec<u8>) -> Result<StoredMessage, StoreError> {
    let mut buf = Bytes::from(raw);
    let bad =
        || StoreError::Unavailable(format!("redis holds a malformed log entry {group}#{seq}"));
    if buf.remaining() < 2 {
        return Err(bad());
    }
    let len = buf.get_u16() as usize;
    if buf.remaining() < len + 8 {
        return Err(bad());
    }
    let sender = String::from_utf8(buf.split_to(len).to_vec()).map_err(|_| bad())?;
    let ts_ms = buf.get_u64();
    Ok(StoredMessage {
        group: group.to_owned(),
        seq,
        sender,
        ts_ms,
        body: buf,
        visible_to: None,
    })
}

/// KEYS: meta, members, roster. ARGV: owner, now, then member ids. 0 if the group exists.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'created', ARGV[2], 'head', 0, 'last_ts', ARGV[2])
for i = 3, #ARGV do
  local role = 'm:0'
  if ARGV[i] == ARGV[1] then role = 'o:0' end
  redis.call('HSET', KEYS[2], ARGV[i], role)
  redis.call('ZADD', KEYS[3], 0, ARGV[i])
end
return 1
"#,
    )
});

/// KEYS: meta, members, roster. ARGV: users. Returns {head, added...} or -1 if no group.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local head = redis.call('HGET', KEYS[1], 'head')
local added = {head}
for i = 1, #ARGV do
  if redis.call('HSETNX', KEYS[2], ARGV[i], 'm:' .. head) == 1 then
    redis.call('ZADD', KEYS[3], 0, ARGV[i])
    table.insert(added, ARGV[i])
  end
end
return added
"#,
    )
});

/// KEYS: meta, members, roster. ARGV: users. Returns the removed, or -1 if no group.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local removed = {}
for i = 1, #ARGV do
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[3], ARGV[i])
    table.insert(removed, ARGV[i])
  end
end
return removed
"#,
    )
});

/// Sequence assignment, log append and idempotency record of a run of one group's
/// messages, in order, in one step. KEYS: meta, log, ids, private. ARGV, per message:
/// sender\0msg_id, ts, entry, recipients ('' = all), k, then the private-index keys of its
/// k recipients (same slot: they carry the group's tag). Returns per message
/// {seq, ts, duplicate}, or -1 if no group.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local exists = redis.call('EXISTS', KEYS[1]) == 1
local out = {}
local i = 1
while i <= #ARGV do
  local id, ts, to, k = ARGV[i], ARGV[i + 1], ARGV[i + 3], tonumber(ARGV[i + 4])
  local seen = redis.call('HGET', KEYS[3], id)
  if seen then
    local sep = string.find(seen, ':')
    out[#out + 1] = {tonumber(string.sub(seen, 1, sep - 1)), tonumber(string.sub(seen, sep + 1)), 1}
  elseif not exists then
    out[#out + 1] = -1
  else
    local seq = redis.call('HINCRBY', KEYS[1], 'head', 1)
    redis.call('HSET', KEYS[1], 'last_ts', ts)
    redis.call('HSET', KEYS[2], seq, ARGV[i + 2])
    redis.call('HSET', KEYS[3], id, seq .. ':' .. ts)
    if to ~= '' then
      redis.call('HSET', KEYS[4], seq, to)
      for j = i + 5, i + 4 + k do redis.call('SADD', ARGV[j], seq) end
    end
    out[#out + 1] = {seq, tonumber(ts), 0}
  end
  i = i + 5 + k
end
return out
"#,
    )
});

/// KEYS: cursor hashes, one per device. ARGV: for each key in turn, how many cursors, then
/// that many group, seq pairs. Moves each cursor forward only.
static ADVANCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local a = 1
for k = 1, #KEYS do
  for i = a + 1, a + 2 * tonumber(ARGV[a]), 2 do
    local current = tonumber(redis.call('HGET', KEYS[k], ARGV[i]) or '0')
    if tonumber(ARGV[i + 1]) > current then redis.call('HSET', KEYS[k], ARGV[i], ARGV[i + 1]) end
  end
  a = a + 1 + 2 * tonumber(ARGV[a])
end
return 1
"#,
    )
});

/// Users whose keys (offline references, cursors) one script call carries on a single
/// server; a Cluster takes one per call (`RedisStore::users_per_call`).
const USERS_PER_CALL: usize = 250;

/// Counts a range of a group's messages once. KEYS: meta, unread. ARGV: from, to, then
/// user, increment pairs. Returns the new counts in order, or -1 if counted is not `from`.
static COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if tonumber(redis.call('HGET', KEYS[1], 'counted') or '0') ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'counted', ARGV[2])
local counts = {}
for i = 3, #ARGV, 2 do
  table.insert(counts, redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]))
end
return counts
"#,
    )
});

/// KEYS: meta, unread, read. ARGV: user, read seq, count, counted. 0 if counted moved.
static MARK_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if tonumber(redis.call('HGET', KEYS[1], 'counted') or '0') ~= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 1
"#,
    )
});

/// KEYS: offline order, offline seqs, offline positions of each user in turn. ARGV:
/// group, capacity, then each user's seq. Writes each user's reference at their next
/// position (or where it is, if it is their latest write already and no device synced
/// there) and evicts their oldest past the capacity.
static OFFLINE_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local group, capacity = ARGV[1], tonumber(ARGV[2])
for u = 0, #KEYS / 3 - 1 do
  local order, seqs, positions = KEYS[3 * u + 1], KEYS[3 * u + 2], KEYS[3 * u + 3]
  local seq = ARGV[u + 3]
  if tonumber(seq) > tonumber(redis.call('HGET', seqs, group) or '0') then
    redis.call('HSET', seqs, group, seq)
  end
  local head = tonumber(redis.call('HGET', positions, 'head') or '0')
  local move = tonumber(redis.call('ZSCORE', order, group) or '-1') ~= head
  if not move then
    -- A device synced there: evicting the entry later must still tell it.
    local marks = redis.call('HGETALL', positions)
    for i = 1, #marks, 2 do
      if string.sub(marks[i], 1, 7) == 'synced:' and tonumber(marks[i + 1]) >= head then
        move = true
      end
    end
  end
  if move then
    local position = redis.call('HINCRBY', positions, 'head', 1)
    redis.call('ZADD', order, position, group)
    local excess = redis.call('ZCARD', order) - capacity
    if excess > 0 then
      local gone = redis.call('ZPOPMIN', order, excess)
      for i = 1, #gone, 2 do redis.call('HDEL', seqs, gone[i]) end
      redis.call('HSET', positions, 'evicted', gone[#gone])
    end
  end
end
return 1
"#,
    )
});

/// KEYS: offline seqs, offline positions. ARGV: device. Returns {entries, head, evicted, synced}.
static OFFLINE_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local positions = redis.call('HMGET', KEYS[2], 'head', 'evicted', 'synced:' .. ARGV[1])
return {redis.call('HGETALL', KEYS[1]), positions[1] or '0', positions[2] or '0', positions[3] or '0'}
"#,
    )
});

/// KEYS: offline positions. ARGV: device, position. Moves the device's synced position forward.
static OFFLINE_SYNCED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local field = 'synced:' .. ARGV[1]
if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[1], field) or '0') then
  redis.call('HSET', KEYS[1], field, ARGV[2])
end
return 1
"#,
    )
});

/// KEYS: the gateway registry. ARGV: gateway, now, expiry. Renews the gateway, drops the
/// expired, returns the live.
static LIVE_GATEWAYS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"#,
    )
});

impl RedisStore {
    /// Connects (and reconnects by itself) to a server or a Cluster.
    pub async fn connect(target: &RedisTarget) -> Result<Self, StoreError> {
        Ok(Self {
            redis: target.connect().await?,
        })
    }

    fn con(&self) -> RedisConnection {
        self.redis.clone()
    }

    /// How many users' keys one script call may carry: `USERS_PER_CALL` on one server, one
    /// on a Cluster (different users' keys live on different slots).
    fn users_per_call(&self) -> usize {
        match self.redis {
            RedisConnection::Server(_) => USERS_PER_CALL,
            RedisConnection::Cluster(_) => 1,
        }
    }

    /// Appends a run of `group`'s messages in order, in one script.
    async fn append_run(
        &self,
        group: &str,
        run: &[NewMessage],
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let mut script = APPEND.prepare_invoke();
        script
            .key(group_key(group, "meta"))
            .key(group_key(group, "log"))
            .key(group_key(group, "ids"))
            .key(group_key(group, "private"));
        for m in run {
            let recipients = m.visible_to.as_deref().unwrap_or_default();
            script
                .arg(format!("{}\0{}", m.sender, m.msg_id))
                .arg(m.ts_ms)
                .arg(encode_entry(&m.sender, m.ts_ms, &m.body))
                .arg(recipients.join(","))
                .arg(recipients.len());
            for user in recipients {
                script.arg(group_key(group, &format!("pidx:{user}")));
            }
        }
        let replies: Vec<redis::Value> = script.invoke_async(&mut self.con()).await?;
        replies
            .into_iter()
            .map(|reply| match reply {
                redis::Value::Int(-1) => Ok(Err(StoreError::NoSuchGroup(group.to_owned()))),
                other => {
                    let (seq, ts_ms, duplicate): (u64, u64, u8) = redis::from_redis_value(other)?;
                    Ok(Ok(Appended {
                        seq,
                        ts_ms,
                        duplicate: duplicate == 1,
                    }))
                }
            })
            .collect()
    }

    /// Runs commands on different slots (one per user or per group) concurrently: a
    /// pipeline may not cross slots on a Cluster, and concurrent commands on one
    /// multiplexed connection are pipelined anyway.
    async fn each<T: FromRedisValue>(&self, commands: Vec<Cmd>) -> Result<Vec<T>, StoreError> {
        let replies = commands.into_iter().map(|command| {
            let mut con = self.con();
            async move { command.query_async::<T>(&mut con).await }
        });
        Ok(try_join_all(replies).await?)
    }

    /// Runs ADD or REMOVE on a group's meta, members and roster with `users` as arguments.
    async fn change_roster(
        &self,
        script: &Script,
        group: &str,
        users: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(group_key(group, "meta"))
            .key(group_key(group, "members"))
            .key(group_key(group, "roster"));
        for u in users {
            invocation.arg(u);
        }
        match invocation.invoke_async(&mut self.con()).await? {
            redis::Value::Int(-1) => Err(StoreError::NoSuchGroup(group.to_owned())),
            other => Ok(redis::from_redis_value(other)?),
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn create_group(
        &self,
        group: &str,
        owner: &str,
        members: &[String],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut con = self.con();
        let mut script = CREATE.prepare_invoke();
        script
            .key(group_key(group, "meta"))
            .key(group_key(group, "members"))
            .key(group_key(group, "roster"));
        script.arg(owner).arg(now_ms).arg(owner);
        for m in members {
            script.arg(m);
        }
        let created: i64 = script.invoke_async(&mut con).await?;
        if created == 0 {
            return Err(StoreError::GroupExists(group.to_owned()));
        }
        let mut writes = vec![Cmd::hset(
            user_key(owner, "groups"),
            group,
            role_value(true, 0),
        )];
        writes.extend(
            members
                .iter()
                .map(|m| Cmd::hset(user_key(m, "groups"), group, role_value(false, 0))),
        );
        self.each::<()>(writes).await?;
        Ok(())
    }

    async fn group(&self, group: &str) -> Result<Option<GroupInfo>, StoreError> {
        let mut con = self.con();
        let (owner, created, head, last): (Option<String>, Option<u64>, Option<u64>, Option<u64>) =
            redis::cmd("HMGET")
                .arg(group_key(group, "meta"))
                .arg(&META_FIELDS[..])
                .query_async(&mut con)
                .await?;
        Ok(owner.map(|owner| GroupInfo {
            owner,
            created_ms: created.unwrap_or(0),
            head_seq: head.unwrap_or(0),
            last_ts_ms: last.unwrap_or(0),
        }))
    }

    async fn add_members(
        &self,
        group: &str,
        users: &[String],
    ) -> Result<Vec<Membership>, StoreError> {
        let values = self.change_roster(&ADD, group, users).await?;
        let head: u64 = values.first().and_then(|h| h.parse().ok()).unwrap_or(0);
        let added: Vec<Membership> = values[1..]
            .iter()
            .map(|u| Membership {
                group: group.to_owned(),
                user: u.clone(),
                owner: false,
                joined_seq: head,
            })
            .collect();
        let writes = added
            .iter()
            .map(|m| Cmd::hset(user_key(&m.user, "groups"), group, role_value(false, head)))
            .collect();
        self.each::<()>(writes).await?;
        Ok(added)
    }

    async fn remove_members(
        &self,
        group: &str,
        users: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let removed = self.change_roster(&REMOVE, group, users).await?;
        let writes = removed
            .iter()
            .map(|u| Cmd::hdel(user_key(u, "groups"), group))
            .collect();
        self.each::<()>(writes).await?;
        Ok(removed)
    }

    async fn membership(&self, group: &str, user: &str) -> Result<Option<Membership>, StoreError> {
        let value: Option<String> = self.con().hget(group_key(group, "members"), user).await?;
        value.map(|v| parse_role(group, user, &v)).transpose()
    }

    async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Membership>, StoreError> {
        let mut con = self.con();
        let start = if after.is_empty() {
            "-".to_owned()
        } else {
            format!("({after}")
        };
        let users: Vec<String> = con
            .zrangebylex_limit(group_key(group, "roster"), start, "+", 0, limit as isize)
            .await?;
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let roles: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(group_key(group, "members"))
            .arg(&users)
            .query_async(&mut con)
            .await?;
        users
            .iter()
            .zip(roles)
            .filter_map(|(u, role)| role.map(|r| parse_role(group, u, &r)))
            .collect()
    }

    async fn groups_of(&self, user: &str) -> Result<Vec<Membership>, StoreError> {
        let entries: Vec<(String, String)> = self.con().hgetall(user_key(user, "groups")).await?;
        let mut groups: Vec<Membership> = entries
            .iter()
            .map(|(g, role)| parse_role(g, user, role))
            .collect::<Result<_, _>>()?;
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(groups)
    }

    async fn conversations(&self, user: &str) -> Result<Vec<(Membership, GroupInfo)>, StoreError> {
        let memberships = self.groups_of(user).await?;
        let reads = memberships
            .iter()
            .map(|m| {
                let mut read = redis::cmd("HMGET");
                read.arg(group_key(&m.group, "meta")).arg(&META_FIELDS[..]);
                read
            })
            .collect();
        let metas: Vec<(Option<String>, Option<u64>, Option<u64>, Option<u64>)> =
            self.each(reads).await?;
        Ok(memberships
            .into_iter()
            .zip(metas)
            .filter_map(|(m, (owner, created, head, last))| {
                owner.map(|owner| {
                    let info = GroupInfo {
                        owner,
                        created_ms: created.unwrap_or(0),
                        head_seq: head.unwrap_or(0),
                        last_ts_ms: last.unwrap_or(0),
                    };
                    (m, info)
                })
            })
            .collect())
    }

    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        let group = m.group.clone();
        let mut results = self.append_run(&group, &[m]).await?;
        results.pop().expect("one result per message")
    }

    /// One script per group, the groups concurrently (each is its own slot): a run of
    /// pipelined sends to one group costs one round trip, not one per message.
    async fn append_batch(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let mut runs: Vec<(String, Vec<NewMessage>)> = Vec::new();
        let mut run_of = Vec::with_capacity(messages.len());
        for m in messages {
            let run = match runs.iter().position(|(group, _)| *group == m.group) {
                Some(run) => run,
                None => {
                    runs.push((m.group.clone(), Vec::new()));
                    runs.len() - 1
                }
            };
            runs[run].1.push(m);
            run_of.push(run);
        }
        let done = join_all(runs.iter().map(|(group, run)| self.append_run(group, run))).await;
        let mut done: Vec<Result<_, String>> = done
            .into_iter()
            .map(|outcome| outcome.map(Vec::into_iter).map_err(|e| e.to_string()))
            .collect();
        // Each run's results in order, each message taking the next of its run's.
        Ok(run_of
            .into_iter()
            .map(|run| match &mut done[run] {
                Ok(results) => results.next().expect("a result per message"),
                // Not known whether the run was stored: each send is answered with the
                // error, and a retry with the same msg_id is idempotent.
                Err(error) => Err(StoreError::Unavailable(error.clone())),
            })
            .collect())
    }

    async fn messages(
        &self,
        group: &str,
        range: SeqRange,
        from: PageFrom,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut con = self.con();
        let head: Option<u64> = con.hget(group_key(group, "meta"), "head").await?;
        let (low, high) = (
            range.after.saturating_add(1),
            range.before.saturating_sub(1).min(head.unwrap_or(0)),
        );
        if low > high || limit == 0 {
            return Ok(Vec::new());
        }
        let count = (high - low + 1).min(limit as u64);
        let first = match from {
            PageFrom::Oldest => low,
            PageFrom::Newest => high + 1 - count,
        };
        let seqs: Vec<u64> = (first..first + count).collect();
        let (entries, private): (Vec<Option<Vec<u8>>>, Vec<Option<String>>) = redis::pipe()
            .cmd("HMGET")
            .arg(group_key(group, "log"))
            .arg(&seqs)
            .cmd("HMGET")
            .arg(group_key(group, "private"))
            .arg(&seqs)
            .query_async(&mut con)
            .await?;
        let mut page = Vec::with_capacity(seqs.len());
        for ((seq, entry), to) in seqs.into_iter().zip(entries).zip(private) {
            let Some(raw) = entry else { continue };
            let mut message = decode_entry(group, seq, raw)?;
            message.visible_to = to.map(|to| to.split(',').map(str::to_owned).collect());
            page.push(message);
        }
        Ok(page)
    }

    async fn plugin_get(&self, plugin: &str, key: &str) -> Result<Option<Bytes>, StoreError> {
        let value: Option<Vec<u8>> = self
            .con()
            .hget(format!("chat:{{p:{plugin}}}:kv"), key)
            .await?;
        Ok(value.map(Bytes::from))
    }

    async fn plugin_set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.con()
            .hset::<_, _, _, ()>(format!("chat:{{p:{plugin}}}:kv"), key, value)
            .await?;
        Ok(())
    }

    async fn plugin_delete(&self, plugin: &str, key: &str) -> Result<(), StoreError> {
        self.con()
            .hdel::<_, _, ()>(format!("chat:{{p:{plugin}}}:kv"), key)
            .await?;
        Ok(())
    }

    async fn cursors(&self, user: &str, device: &str) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .con()
            .hgetall(user_key(user, &format!("cursors:{device}")))
            .await?)
    }

    async fn advance_cursors_batch(&self, batch: &[CursorAdvance]) -> Result<(), StoreError> {
        let per_call = self.users_per_call();
        // All calls in flight at once; one per device was 5,000 calls a second for a
        // 5,000-member group.
        let writes = batch
            .iter()
            .filter(|(_, _, cursors)| !cursors.is_empty())
            .collect::<Vec<_>>()
            .chunks(per_call)
            .map(|devices| {
                let mut script = ADVANCE.prepare_invoke();
                for (user, device, cursors) in devices {
                    script
                        .key(user_key(user, &format!("cursors:{device}")))
                        .arg(cursors.len());
                    for (group, seq) in cursors {
                        script.arg(group).arg(*seq);
                    }
                }
                let mut con = self.con();
                async move { script.invoke_async::<i64>(&mut con).await }
            })
            .collect::<Vec<_>>();
        try_join_all(writes).await?;
        Ok(())
    }

    async fn buffer_offline(
        &self,
        group: &str,
        refs: &[(String, u64)],
        capacity: usize,
    ) -> Result<(), StoreError> {
        let per_call = self.users_per_call();
        // All calls in flight at once.
        let writes = refs
            .chunks(per_call)
            .map(|users| {
                let mut script = OFFLINE_ADD.prepare_invoke();
                script.arg(group).arg(capacity.max(1));
                for (user, seq) in users {
                    script
                        .key(user_key(user, "offline"))
                        .key(user_key(user, "offline:seq"))
                        .key(user_key(user, "offline:pos"))
                        .arg(*seq);
                }
                let mut con = self.con();
                async move { script.invoke_async::<i64>(&mut con).await }
            })
            .collect::<Vec<_>>();
        try_join_all(writes).await?;
        Ok(())
    }

    async fn offline(&self, user: &str, device: &str) -> Result<OfflineBuffer, StoreError> {
        let mut script = OFFLINE_READ.prepare_invoke();
        script
            .key(user_key(user, "offline:seq"))
            .key(user_key(user, "offline:pos"))
            .arg(device);
        let (entries, head, evicted, synced): (Vec<(String, u64)>, u64, u64, u64) =
            script.invoke_async(&mut self.con()).await?;
        Ok(OfflineBuffer {
            entries,
            head,
            evicted,
            synced,
        })
    }

    async fn offline_synced(
        &self,
        user: &str,
        device: &str,
        position: u64,
    ) -> Result<(), StoreError> {
        let mut script = OFFLINE_SYNCED.prepare_invoke();
        script
            .key(user_key(user, "offline:pos"))
            .arg(device)
            .arg(position);
        script.invoke_async::<i64>(&mut self.con()).await?;
        Ok(())
    }

    async fn counted_seq(&self, group: &str) -> Result<u64, StoreError> {
        let counted: Option<u64> = self.con().hget(group_key(group, "meta"), "counted").await?;
        Ok(counted.unwrap_or(0))
    }

    async fn count_unread(
        &self,
        group: &str,
        from: u64,
        to: u64,
        increments: &[(String, u64)],
    ) -> Result<Option<Vec<(String, u64)>>, StoreError> {
        let mut script = COUNT.prepare_invoke();
        script
            .key(group_key(group, "meta"))
            .key(group_key(group, "unread"));
        script.arg(from).arg(to);
        for (user, k) in increments {
            script.arg(user).arg(*k);
        }
        match script.invoke_async(&mut self.con()).await? {
            redis::Value::Int(-1) => Ok(None),
            other => {
                let counts: Vec<u64> = redis::from_redis_value(other)?;
                Ok(Some(
                    increments
                        .iter()
                        .map(|(user, _)| user.clone())
                        .zip(counts)
                        .collect(),
                ))
            }
        }
    }

    async fn mark_read(
        &self,
        group: &str,
        user: &str,
        read_seq: u64,
        count: u64,
        counted: u64,
    ) -> Result<bool, StoreError> {
        let mut script = MARK_READ.prepare_invoke();
        script
            .key(group_key(group, "meta"))
            .key(group_key(group, "unread"))
            .key(group_key(group, "read"));
        script.arg(user).arg(read_seq).arg(count).arg(counted);
        let done: i64 = script.invoke_async(&mut self.con()).await?;
        Ok(done == 1)
    }

    async fn unread(&self, user: &str) -> Result<Vec<UnreadState>, StoreError> {
        let memberships = self.groups_of(user).await?;
        // One pipeline per group (its keys share a slot), all of them at once.
        let reads = memberships.iter().map(|m| {
            let mut con = self.con();
            let mut pipe = redis::pipe();
            pipe.hget(group_key(&m.group, "unread"), user)
                .hget(group_key(&m.group, "read"), user)
                .cmd("HMGET")
                .arg(group_key(&m.group, "meta"))
                .arg(&["counted", "head"]);
            async move {
                pipe.query_async::<(Option<u64>, Option<u64>, (Option<u64>, Option<u64>))>(&mut con)
                    .await
            }
        });
        let states = try_join_all(reads).await?;
        Ok(memberships
            .into_iter()
            .zip(states)
            .map(|(m, (count, read, (counted, head)))| UnreadState {
                group: m.group,
                count: count.unwrap_or(0),
                read_seq: read.unwrap_or(0),
                counted_seq: counted.unwrap_or(0),
                head_seq: head.unwrap_or(0),
            })
            .collect())
    }

    async fn live_gateways(
        &self,
        gateway: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        let mut script = LIVE_GATEWAYS.prepare_invoke();
        script.key("chat:gateways");
        script.arg(gateway).arg(now_ms).arg(now_ms + ttl_ms);
        Ok(script.invoke_async(&mut self.con()).await?)
    }

    async fn read_marker(&self, group: &str, user: &str) -> Result<u64, StoreError> {
        let marker: Option<u64> = self.con().hget(group_key(group, "read"), user).await?;
        Ok(marker.unwrap_or(0))
    }
}
