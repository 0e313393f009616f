//! Answers request frames: authorize → validate → store → publish. One function per
//! request; each returns the response frame or a [`RequestError`] that becomes an
//! `Error` frame with the same request id.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chat_protocol::{
    Conversation, ErrorCode, Frame, HistoryPage, MAX_BODY_LEN, MAX_FRAME_LEN, MAX_PAGE, MemberInfo,
    Role, valid_id,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::publish::Publisher;
use super::visibility::render;
use crate::bus::{Bus, BusError, Event, Topic};
use crate::plugins::{Plugins, Refusal};
use crate::store::{Membership, NewMessage, PageFrom, SeqRange, Store, StoreError, StoredMessage};

/// Most users one CreateGroup, AddMembers or RemoveMembers may name.
pub const MAX_USERS_PER_REQUEST: usize = 1000;
/// Most members one ListMembers page returns.
pub const MAX_MEMBERS_PAGE: usize = 1000;
/// Most conversations one ListConversations returns.
pub const MAX_CONVERSATIONS: usize = 1000;
/// Groups listed in one `Unread` answer (the total counts them all): 2,000 of the
/// longest ids still fit in a frame.
pub const MAX_UNREAD_GROUPS: usize = 2000;
/// Most groups one `Focus` may name.
pub const MAX_FOCUS_GROUPS: usize = 1000;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("message body of {0} bytes exceeds the {MAX_BODY_LEN}-byte limit")]
    BodyTooLarge(usize),
    #[error("you are not a member of {0}")]
    NotMember(String),
    #[error("only the owner of {0} may do that")]
    NotOwner(String),
    #[error("frame type {0} is not a request")]
    NotARequest(&'static str),
    #[error(transparent)]
    Plugin(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl RequestError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::InvalidArgument(_) => ErrorCode::INVALID_ARGUMENT,
            RequestError::BodyTooLarge(_) => ErrorCode::BODY_TOO_LARGE,
            RequestError::NotMember(_) => ErrorCode::NOT_MEMBER,
            RequestError::NotOwner(_) => ErrorCode::NOT_OWNER,
            RequestError::NotARequest(_) => ErrorCode::PROTOCOL_VIOLATION,
            RequestError::Plugin(Refusal::Rejected(_)) => ErrorCode::REJECTED,
            RequestError::Plugin(Refusal::UnknownCommand(_)) => ErrorCode::UNKNOWN_COMMAND,
            RequestError::Plugin(Refusal::Failed(_)) => ErrorCode::PLUGIN_FAILED,
            RequestError::Store(StoreError::GroupExists(_)) => ErrorCode::GROUP_EXISTS,
            RequestError::Store(StoreError::NoSuchGroup(_)) => ErrorCode::NO_SUCH_GROUP,
            RequestError::Store(StoreError::Unavailable(_)) | RequestError::Bus(_) => {
                ErrorCode::UNAVAILABLE
            }
        }
    }
}

/// Request handling shared by every connection of a gateway.
pub struct Requests {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    publisher: Arc<Publisher>,
    plugins: Arc<Plugins>,
    /// Requests answered, by frame type and outcome (`ok` or the error code's name).
    answered: Family<RequestLabels, Counter>,
    seconds: crate::metrics::LatencyFamily<RequestKind>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    request: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestKind {
    request: &'static str,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn check_id(kind: &str, id: &str) -> Result<(), RequestError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(RequestError::InvalidArgument(format!(
            "invalid {kind} id {id:?}: use 1 to 64 characters from A-Z a-z 0-9 _ - . @ :"
        )))
    }
}

fn check_focus(groups: &[String]) -> Result<(), RequestError> {
    if groups.len() > MAX_FOCUS_GROUPS {
        return Err(RequestError::InvalidArgument(format!(
            "{} groups in Focus; at most {MAX_FOCUS_GROUPS}",
            groups.len()
        )));
    }
    groups.iter().try_for_each(|g| check_id("group", g))
}

fn check_users(users: &[String]) -> Result<(), RequestError> {
    if users.len() > MAX_USERS_PER_REQUEST {
        return Err(RequestError::InvalidArgument(format!(
            "{} users in one request; at most {MAX_USERS_PER_REQUEST}",
            users.len()
        )));
    }
    users.iter().try_for_each(|u| {
        if u.starts_with(chat_protocol::PLUGIN_SENDER_PREFIX) {
            return Err(RequestError::InvalidArgument(format!(
                "{u:?}: user ids may not start with \"plugin:\""
            )));
        }
        check_id("user", u)
    })
}

/// `limit` of 0 means `default`; anything above `max` is clamped.
fn clamp_limit(limit: u16, default: usize, max: usize) -> usize {
    if limit == 0 {
        default
    } else {
        (limit as usize).min(max)
    }
}

impl Requests {
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        publisher: Arc<Publisher>,
        plugins: Arc<Plugins>,
    ) -> Self {
        Self {
            store,
            bus,
            publisher,
            plugins,
            answered: Family::default(),
            seconds: crate::metrics::latency_family(),
        }
    }

    pub(crate) fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Requests answered, by type and outcome (ok, or the error code; request=\"Send\", outcome=\"ok\" counts messages sent)",
            self.answered.clone(),
        );
        crate::metrics::register_seconds(
            registry,
            "request",
            "Time to answer a request, by type",
            self.seconds.clone(),
        );
    }

    /// Answers one request frame from `user`.
    pub async fn handle(&self, user: &str, frame: Frame) -> Frame {
        let mut responses = self.handle_all(user, vec![frame]).await;
        responses.pop().expect("one response per request")
    }

    /// Answers one request that is not a `Send` (those go through `send_all`).
    async fn handle_one(&self, user: &str, frame: Frame) -> Frame {
        let id = frame.request_id().unwrap_or(0);
        let request = frame.frame_type().name();
        let started = Instant::now();
        let result = self.dispatch(user, frame).await;
        self.answer(user, id, request, started, result)
    }

    /// Answers request frames from `user` in order, one response each. A run of `Send`s
    /// (a client pipelining its messages) is checked one by one, then stored as one batch:
    /// one store step, one fsync on the embedded store, in the order they came.
    pub async fn handle_all(&self, user: &str, frames: Vec<Frame>) -> Vec<Frame> {
        let mut responses = Vec::with_capacity(frames.len());
        let mut sends = Vec::new();
        for frame in frames {
            match frame {
                Frame::Send {
                    id,
                    group,
                    msg_id,
                    body,
                    to,
                } => {
                    let started = Instant::now();
                    let prepared = self.prepare_send(user, group, msg_id, body, to).await;
                    sends.push((id, started, prepared));
                }
                request => {
                    self.send_all(user, std::mem::take(&mut sends), &mut responses)
                        .await;
                    responses.push(self.handle_one(user, request).await);
                }
            }
        }
        self.send_all(user, sends, &mut responses).await;
        responses
    }

    /// Answers `Focus`: checks the groups and hands the set to `apply` (a connection's
    /// fan-out state is the node's, not a request's).
    pub fn focus(
        &self,
        user: &str,
        id: u32,
        groups: Vec<String>,
        apply: impl FnOnce(HashSet<String>),
    ) -> Frame {
        let started = Instant::now();
        let result = check_focus(&groups).map(|()| {
            apply(groups.into_iter().collect());
            Frame::Done { id }
        });
        self.answer(user, id, "Focus", started, result)
    }

    /// Stores and publishes the prepared sends as one batch; appends their responses.
    async fn send_all(
        &self,
        user: &str,
        sends: Vec<(u32, Instant, Result<NewMessage, RequestError>)>,
        responses: &mut Vec<Frame>,
    ) {
        if sends.is_empty() {
            return;
        }
        let messages: Vec<NewMessage> = sends
            .iter()
            .filter_map(|(_, _, prepared)| prepared.as_ref().ok().cloned())
            .collect();
        let mut published = self.publisher.publish_batch(messages).await.into_iter();
        for (id, started, prepared) in sends {
            let result = prepared.and_then(|message| {
                let appended = published.next().expect("one result per message")?;
                Ok(Frame::Sent {
                    id,
                    group: message.group,
                    seq: appended.seq,
                    ts_ms: appended.ts_ms,
                    duplicate: appended.duplicate,
                })
            });
            responses.push(self.answer(user, id, "Send", started, result));
        }
    }

    /// Counts and times a request's outcome and turns an error into its `Error` frame.
    fn answer(
        &self,
        user: &str,
        id: u32,
        request: &'static str,
        started: Instant,
        result: Result<Frame, RequestError>,
    ) -> Frame {
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.code().name(),
        };
        self.answered
            .get_or_create(&RequestLabels { request, outcome })
            .inc();
        self.seconds
            .get_or_create(&RequestKind { request })
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(response) => response,
            Err(error) => {
                if let RequestError::Store(StoreError::Unavailable(_)) | RequestError::Bus(_) =
                    error
                {
                    tracing::warn!(%user, %error, "request failed");
                }
                Frame::Error {
                    id,
                    code: error.code(),
                    message: error.to_string(),
                }
            }
        }
    }

    async fn dispatch(&self, user: &str, frame: Frame) -> Result<Frame, RequestError> {
        match frame {
            Frame::CreateGroup { id, group, members } => {
                self.create_group(id, user, &group, members).await
            }
            Frame::AddMembers { id, group, users } => {
                self.add_members(id, user, &group, users).await
            }
            Frame::RemoveMembers { id, group, users } => {
                self.remove_members(id, user, &group, users).await
            }
            Frame::LeaveGroup { id, group } => self.leave_group(id, user, &group).await,
            Frame::ListMembers {
                id,
                group,
                after,
                limit,
            } => self.list_members(id, user, &group, &after, limit).await,
            // `handle_all` takes every `Send` aside and stores the run with `send_all`.
            Frame::Send { .. } => unreachable!("sends are answered by send_all"),
            Frame::History {
                id,
                group,
                page,
                limit,
            } => self.history(id, user, &group, page, limit).await,
            Frame::ListConversations { id, limit } => self.conversations(id, user, limit).await,
            Frame::Command {
                id,
                group,
                name,
                args,
            } => self.command(id, user, &group, &name, &args).await,
            Frame::GetUnread { id } => {
                let summary = self.publisher.unread().summary(user).await?;
                let mut groups = summary.groups;
                groups.retain(|g| g.count > 0);
                groups.truncate(MAX_UNREAD_GROUPS);
                Ok(Frame::Unread {
                    id,
                    total: summary.total,
                    groups,
                })
            }
            Frame::MarkRead { id, group, seq } => {
                let member = self.member(user, &group).await?;
                let unread = self.publisher.unread();
                unread.mark_read(&member, Some(seq), &self.plugins).await?;
                Ok(Frame::Done { id })
            }
            other => Err(RequestError::NotARequest(other.frame_type().name())),
        }
    }

    /// The caller's membership, or `NotMember` (also for groups that do not exist, so
    /// non-members learn nothing about other groups).
    async fn member(&self, user: &str, group: &str) -> Result<Membership, RequestError> {
        check_id("group", group)?;
        self.store
            .membership(group, user)
            .await?
            .ok_or_else(|| RequestError::NotMember(group.to_owned()))
    }

    async fn owner(&self, user: &str, group: &str) -> Result<(), RequestError> {
        if self.member(user, group).await?.owner {
            Ok(())
        } else {
            Err(RequestError::NotOwner(group.to_owned()))
        }
    }

    async fn announce_joined(&self, memberships: &[Membership]) -> Result<(), RequestError> {
        for m in memberships {
            let event = Event::Joined {
                group: m.group.clone(),
                user: m.user.clone(),
                joined_seq: m.joined_seq,
            };
            self.bus.publish(Topic::User(m.user.clone()), event).await?;
        }
        Ok(())
    }

    async fn announce_left(&self, group: &str, users: &[String]) -> Result<(), RequestError> {
        for user in users {
            let event = Event::Left {
                group: group.to_owned(),
                user: user.clone(),
            };
            self.bus.publish(Topic::User(user.clone()), event).await?;
        }
        Ok(())
    }

    async fn create_group(
        &self,
        id: u32,
        user: &str,
        group: &str,
        mut members: Vec<String>,
    ) -> Result<Frame, RequestError> {
        check_id("group", group)?;
        check_users(&members)?;
        members.retain(|m| m != user);
        members.sort();
        members.dedup();
        self.store
            .create_group(group, user, &members, now_ms())
            .await?;
        let joined: Vec<Membership> = std::iter::once(user.to_owned())
            .chain(members)
            .map(|u| Membership {
                group: group.to_owned(),
                owner: u == user,
                user: u,
                joined_seq: 0,
            })
            .collect();
        self.announce_joined(&joined).await?;
        Ok(Frame::Done { id })
    }

    async fn add_members(
        &self,
        id: u32,
        user: &str,
        group: &str,
        users: Vec<String>,
    ) -> Result<Frame, RequestError> {
        check_users(&users)?;
        self.owner(user, group).await?;
        let added = self.store.add_members(group, &users).await?;
        self.announce_joined(&added).await?;
        Ok(Frame::Done { id })
    }

    async fn remove_members(
        &self,
        id: u32,
        user: &str,
        group: &str,
        users: Vec<String>,
    ) -> Result<Frame, RequestError> {
        check_users(&users)?;
        self.owner(user, group).await?;
        if users.iter().any(|u| u == user) {
            return Err(RequestError::InvalidArgument(format!(
                "the owner cannot be removed from {group}"
            )));
        }
        let removed = self.store.remove_members(group, &users).await?;
        self.announce_left(group, &removed).await?;
        Ok(Frame::Done { id })
    }

    async fn leave_group(&self, id: u32, user: &str, group: &str) -> Result<Frame, RequestError> {
        if self.member(user, group).await?.owner {
            return Err(RequestError::InvalidArgument(format!(
                "the owner cannot leave {group}"
            )));
        }
        let removed = self.store.remove_members(group, &[user.to_owned()]).await?;
        self.announce_left(group, &removed).await?;
        Ok(Frame::Done { id })
    }

    async fn list_members(
        &self,
        id: u32,
        user: &str,
        group: &str,
        after: &str,
        limit: u16,
    ) -> Result<Frame, RequestError> {
        self.member(user, group).await?;
        let limit = clamp_limit(limit, MAX_MEMBERS_PAGE, MAX_MEMBERS_PAGE);
        let members = self
            .store
            .members(group, after, limit)
            .await?
            .into_iter()
            .map(|m| MemberInfo {
                user: m.user,
                role: if m.owner { Role::Owner } else { Role::Member },
                joined_seq: m.joined_seq,
            })
            .collect();
        Ok(Frame::Members { id, members })
    }

    /// Everything about a send but storing it: limits, membership, private recipients,
    /// the plugins' verdict. What comes out is ready to append.
    async fn prepare_send(
        &self,
        user: &str,
        group: String,
        msg_id: String,
        body: Bytes,
        mut to: Vec<String>,
    ) -> Result<NewMessage, RequestError> {
        if body.len() > MAX_BODY_LEN {
            return Err(RequestError::BodyTooLarge(body.len()));
        }
        check_id("message", &msg_id)?;
        check_users(&to)?;
        self.member(user, &group).await?;
        to.sort();
        to.dedup();
        for recipient in &to {
            if self.store.membership(&group, recipient).await?.is_none() {
                return Err(RequestError::InvalidArgument(format!(
                    "{recipient} is not a member of {group}"
                )));
            }
        }
        let outcome = self.plugins.on_send(&group, user, body, to).await?;
        Ok(NewMessage {
            group,
            sender: user.to_owned(),
            msg_id,
            body: outcome.body,
            ts_ms: now_ms(),
            visible_to: outcome.visible_to,
        })
    }

    async fn command(
        &self,
        id: u32,
        user: &str,
        group: &str,
        name: &str,
        args: &[String],
    ) -> Result<Frame, RequestError> {
        let member = self.member(user, group).await?;
        let text = self.plugins.command(user, group, name, args).await?;
        // A command may change what the caller sees (`delete` hides a message for them):
        // recount their unread messages of the group under the same rules as history.
        let unread = self.publisher.unread();
        if let Err(error) = unread.mark_read(&member, None, &self.plugins).await {
            tracing::warn!(%user, %group, %error, "recounting unread after a command failed");
        }
        Ok(Frame::CommandResult { id, text })
    }

    async fn history(
        &self,
        id: u32,
        user: &str,
        group: &str,
        page: HistoryPage,
        limit: u16,
    ) -> Result<Frame, RequestError> {
        let member = self.member(user, group).await?;
        let limit = clamp_limit(limit, 50, MAX_PAGE as usize);
        let watermark = member.joined_seq;
        let (range, from) = match page {
            HistoryPage::Before(seq) => (
                SeqRange {
                    after: watermark,
                    before: seq,
                },
                PageFrom::Newest,
            ),
            HistoryPage::After(seq) => (
                SeqRange {
                    after: seq.max(watermark),
                    before: u64::MAX,
                },
                PageFrom::Oldest,
            ),
        };
        let mut messages = self.store.messages(group, range, from, limit).await?;
        fit_in_frame(&mut messages, from);
        let hidden = self.plugins.hidden(user, group, &messages).await?;
        let messages = messages
            .into_iter()
            .map(|m| render(user, m, &hidden, 0))
            .collect();
        Ok(Frame::Messages { id, messages })
    }

    async fn conversations(&self, id: u32, user: &str, limit: u16) -> Result<Frame, RequestError> {
        let limit = clamp_limit(limit, 100, MAX_CONVERSATIONS);
        let mut conversations: Vec<Conversation> = self
            .store
            .conversations(user)
            .await?
            .into_iter()
            .map(|(m, info)| Conversation {
                group: m.group,
                head_seq: info.head_seq,
                last_ts_ms: info.last_ts_ms,
            })
            .collect();
        conversations.sort_by(|a, b| {
            b.last_ts_ms
                .cmp(&a.last_ts_ms)
                .then_with(|| a.group.cmp(&b.group))
        });
        conversations.truncate(limit);
        Ok(Frame::Conversations { id, conversations })
    }
}

/// Drops messages from the far end of a page until it fits in one frame, keeping the
/// page contiguous with where the client asked from.
fn fit_in_frame(messages: &mut Vec<StoredMessage>, from: PageFrom) {
    const OVERHEAD: usize = 64 + 2 * chat_protocol::MAX_ID_LEN;
    let budget = MAX_FRAME_LEN - 1024;
    let mut total = 0;
    let keep = |m: &StoredMessage, total: &mut usize| {
        *total += OVERHEAD + m.body.len();
        *total <= budget
    };
    match from {
        PageFrom::Oldest => {
            let n = messages.iter().take_while(|m| keep(m, &mut total)).count();
            messages.truncate(n);
        }
        PageFrom::Newest => {
            let n = messages
                .iter()
                .rev()
                .take_while(|m| keep(m, &mut total))
                .count();
            messages.drain(..messages.len() - n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::LocalBus;
    use crate::store::EmbeddedStore;

    /// Request handling against a real embedded store, with no sockets.
    async fn requests() -> (Requests, Arc<LocalBus>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let bus = Arc::new(LocalBus::new());
        let unread = crate::unread::Unread::start(store.clone(), bus.clone(), Default::default());
        let publisher = Arc::new(Publisher::new(store.clone(), bus.clone(), unread));
        let policy = chat_protocol::AckPolicy {
            max_delay_ms: 50,
            max_batch: 32,
            retransmit_ms: 5000,
        };
        let plugins = Plugins::new(store.clone(), publisher.clone(), (policy, policy)).unwrap();
        (
            Requests::new(store, bus.clone(), publisher, plugins),
            bus,
            dir,
        )
    }

    fn send(id: u32, group: &str, msg_id: &str, body: &'static [u8]) -> Frame {
        Frame::Send {
            id,
            group: group.into(),
            msg_id: msg_id.into(),
            body: Bytes::from_static(body),
            to: vec![],
        }
    }

    fn error_code(frame: &Frame) -> Option<ErrorCode> {
        match frame {
            Frame::Error { code, .. } => Some(*code),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_send_is_stored_once_and_a_retry_republishes_the_stored_message() {
        let (requests, bus, _dir) = requests().await;
        let mut events = bus.take_events().unwrap();
        bus.subscribe(Topic::Group("g".into())).await.unwrap();
        let create = Frame::CreateGroup {
            id: 1,
            group: "g".into(),
            members: vec!["bob".into()],
        };
        assert_eq!(
            requests.handle("alice", create).await,
            Frame::Done { id: 1 }
        );

        let Frame::Sent {
            id, seq, duplicate, ..
        } = requests.handle("alice", send(2, "g", "m1", b"hi")).await
        else {
            panic!("not sent")
        };
        assert_eq!((id, seq, duplicate), (2, 1, false));
        let Frame::Sent { seq, duplicate, .. } =
            requests.handle("alice", send(3, "g", "m1", b"hi")).await
        else {
            panic!("not sent")
        };
        assert_eq!((seq, duplicate), (1, true));

        let Some(Event::Message {
            group,
            seq,
            push,
            private: None,
        }) = events.recv().await
        else {
            panic!("no event")
        };
        assert_eq!((group.as_str(), seq), ("g", 1));
        let mut decoder = chat_protocol::FrameDecoder::new();
        decoder.extend(&push);
        let Some(Frame::Push { message }) = decoder.next_frame().unwrap() else {
            panic!("not a push")
        };
        assert_eq!(
            (message.sender.as_str(), &message.body[..]),
            ("alice", &b"hi"[..])
        );
        // The retry publishes the stored message again (its first attempt may have died
        // before publishing), byte for byte, under the same seq: connections that have
        // seq 1 skip it.
        let Some(Event::Message {
            seq: again,
            push: push_again,
            ..
        }) = events.recv().await
        else {
            panic!("no second event")
        };
        assert_eq!((again, push_again), (1, push));
        assert!(events.try_recv().is_err(), "published once per attempt");
    }

    #[tokio::test]
    async fn history_is_clamped_by_the_join_watermark() {
        let (requests, _bus, _dir) = requests().await;
        requests
            .handle(
                "alice",
                Frame::CreateGroup {
                    id: 1,
                    group: "g".into(),
                    members: vec![],
                },
            )
            .await;
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            requests
                .handle("alice", send(i as u32 + 2, "g", id, b"x"))
                .await;
        }
        let add = Frame::AddMembers {
            id: 9,
            group: "g".into(),
            users: vec!["late".into()],
        };
        assert_eq!(requests.handle("alice", add).await, Frame::Done { id: 9 });
        requests.handle("alice", send(10, "g", "d", b"after")).await;

        let page = Frame::History {
            id: 11,
            group: "g".into(),
            page: HistoryPage::After(0),
            limit: 0,
        };
        let Frame::Messages { messages, .. } = requests.handle("late", page).await else {
            panic!()
        };
        assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [4]);
    }

    #[tokio::test]
    async fn refusals_carry_the_request_id_and_the_right_code() {
        let (requests, _bus, _dir) = requests().await;
        requests
            .handle(
                "alice",
                Frame::CreateGroup {
                    id: 1,
                    group: "g".into(),
                    members: vec!["bob".into()],
                },
            )
            .await;
        let cases = [
            ("eve", send(2, "g", "m", b"x"), ErrorCode::NOT_MEMBER),
            (
                "bob",
                Frame::AddMembers {
                    id: 3,
                    group: "g".into(),
                    users: vec!["eve".into()],
                },
                ErrorCode::NOT_OWNER,
            ),
            (
                "alice",
                Frame::LeaveGroup {
                    id: 4,
                    group: "g".into(),
                },
                ErrorCode::INVALID_ARGUMENT,
            ),
            (
                "alice",
                send(5, "g", "bad id", b"x"),
                ErrorCode::INVALID_ARGUMENT,
            ),
            (
                "alice",
                Frame::Done { id: 6 },
                ErrorCode::PROTOCOL_VIOLATION,
            ),
            (
                "alice",
                Frame::CreateGroup {
                    id: 7,
                    group: "g".into(),
                    members: vec![],
                },
                ErrorCode::GROUP_EXISTS,
            ),
        ];
        for (user, frame, code) in cases {
            let id = frame.request_id();
            let response = requests.handle(user, frame).await;
            assert_eq!(error_code(&response), Some(code), "{response:?}");
            assert_eq!(response.request_id(), id);
        }
    }
}
