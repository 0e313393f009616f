//! The frames of `chat/1` and their encoding. Layouts are documented in `docs/protocol.md`.

use bytes::Bytes;

use crate::ErrorCode;
use crate::codec::{DecodeError, Reader, Writer};

/// A message as clients see it: in pushes and in history pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub group: String,
    pub seq: u64,
    pub sender: String,
    /// Server time of acceptance, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// `FLAG_*` bits. Receivers ignore bits they do not know.
    pub flags: u8,
    pub body: Bytes,
}

impl Message {
    /// The message is hidden from this user (deleted for them, or private to others): a
    /// placeholder with an empty sender and body, so its seq still arrives and gaps stay
    /// detectable.
    pub const FLAG_HIDDEN: u8 = 0x01;
    /// The message is visible to some members only (a private message or notice).
    pub const FLAG_PRIVATE: u8 = 0x02;
    /// A push read from the log to catch a connection up, not a live one: acknowledge it
    /// under the Welcome's catch-up policy.
    pub const FLAG_CATCH_UP: u8 = 0x04;

    pub fn is_hidden(&self) -> bool {
        self.flags & Self::FLAG_HIDDEN != 0
    }
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Member,
    Owner,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub user: String,
    pub role: Role,
    /// The group's head when this member joined: they see only later messages.
    pub joined_seq: u64,
}

/// One entry of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub group: String,
    /// Sequence number of the latest message (0: none yet).
    pub head_seq: u64,
    /// Time of the latest message, or of the group's creation if it has none.
    pub last_ts_ms: u64,
}

/// Acknowledges every push of `group` with `first <= seq <= last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRange {
    pub group: String,
    pub first: u64,
    pub last: u64,
}

/// A user's unread count in one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadCount {
    pub group: String,
    pub count: u64,
}

/// What a background group (see `Focus`) got since the last `Activity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupActivity {
    pub group: String,
    /// The latest seq in the group.
    pub seq: u64,
    /// Messages after the last one pushed on this connection: what bringing the group to
    /// the foreground would push.
    pub pending: u64,
}

/// How a receiver acknowledges pushes on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPolicy {
    /// Longest a receiver may hold an ACK back to batch it with others.
    pub max_delay_ms: u32,
    /// Send the ACK as soon as this many pushes are waiting for it.
    pub max_batch: u16,
    /// The gateway retransmits a push not acknowledged within this time.
    pub retransmit_ms: u32,
}

/// Which way a history page goes from `seq` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPage {
    /// The newest messages older than `seq`, returned in ascending order. `u64::MAX` means the latest.
    Before(u64),
    /// The oldest messages newer than `seq`, in ascending order.
    After(u64),
}

/// Every frame of the protocol. Requests carry a client-chosen `id` that the response echoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    // Handshake.
    Hello {
        version: u16,
        token: String,
        device: String,
    },
    Welcome {
        version: u16,
        user: String,
        /// ACK policy for live pushes.
        ack: AckPolicy,
        /// ACK policy for pushes flagged `FLAG_CATCH_UP`.
        catch_up_ack: AckPolicy,
        max_frame_len: u32,
    },
    // Requests, client to gateway.
    CreateGroup {
        id: u32,
        group: String,
        members: Vec<String>,
    },
    AddMembers {
        id: u32,
        group: String,
        users: Vec<String>,
    },
    RemoveMembers {
        id: u32,
        group: String,
        users: Vec<String>,
    },
    LeaveGroup {
        id: u32,
        group: String,
    },
    ListMembers {
        id: u32,
        group: String,
        after: String,
        limit: u16,
    },
    Send {
        id: u32,
        group: String,
        msg_id: String,
        body: Bytes,
        /// Private recipients; empty for the whole group.
        to: Vec<String>,
    },
    History {
        id: u32,
        group: String,
        page: HistoryPage,
        limit: u16,
    },
    ListConversations {
        id: u32,
        limit: u16,
    },
    /// A command owned by a plugin, e.g. `delete` (delete for me).
    Command {
        id: u32,
        group: String,
        name: String,
        args: Vec<String>,
    },
    /// The caller's unread counts, per group and in total.
    GetUnread {
        id: u32,
    },
    /// Marks `group` read up to `seq` (clamped to the head) for the caller.
    MarkRead {
        id: u32,
        group: String,
        seq: u64,
    },
    Ack {
        ranges: Vec<AckRange>,
    },
    /// The groups the app shows now (replacing any earlier set): the others are in the
    /// background and get `Activity` instead of pushes, where the gateway allows it.
    Focus {
        id: u32,
        groups: Vec<String>,
    },
    // Responses, gateway to client.
    Done {
        id: u32,
    },
    Members {
        id: u32,
        members: Vec<MemberInfo>,
    },
    Sent {
        id: u32,
        group: String,
        seq: u64,
        ts_ms: u64,
        duplicate: bool,
    },
    Messages {
        id: u32,
        messages: Vec<Message>,
    },
    Conversations {
        id: u32,
        conversations: Vec<Conversation>,
    },
    /// A plugin command's answer.
    CommandResult {
        id: u32,
        text: String,
    },
    /// The answer to `GetUnread`: the caller's groups with unread messages, and the sum
    /// over all their groups.
    Unread {
        id: u32,
        total: u64,
        groups: Vec<UnreadCount>,
    },
    Error {
        id: u32,
        code: ErrorCode,
        message: String,
    },
    // Pushes, gateway to client, on the push stream.
    Push {
        message: Message,
    },
    /// New unread counts of some of the caller's groups (each replaces the earlier one);
    /// sent at most once per count flush, not once per message.
    UnreadChanged {
        groups: Vec<UnreadCount>,
    },
    /// The device was too far behind in `group` on connect: messages `first..=last` are
    /// not pushed (pushes go on from `last + 1`); fetch them with `History` if needed.
    Skipped {
        group: String,
        first: u64,
        last: u64,
    },
    /// The gateway is draining: reconnect elsewhere (to `server` if not empty, a
    /// `host:port`) within `deadline_ms`, after which it closes this connection.
    GoAway {
        deadline_ms: u32,
        server: String,
    },
    /// Background groups that got messages: compact notifications instead of pushes.
    Activity {
        groups: Vec<GroupActivity>,
    },
}

/// The type byte of each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Welcome = 0x02,
    CreateGroup = 0x10,
    AddMembers = 0x11,
    RemoveMembers = 0x12,
    LeaveGroup = 0x13,
    ListMembers = 0x14,
    Send = 0x15,
    History = 0x16,
    ListConversations = 0x17,
    Command = 0x18,
    GetUnread = 0x19,
    MarkRead = 0x1A,
    Focus = 0x1B,
    Ack = 0x20,
    Done = 0x30,
    Members = 0x31,
    Sent = 0x32,
    Messages = 0x33,
    Conversations = 0x34,
    CommandResult = 0x35,
    Unread = 0x36,
    Error = 0x3F,
    Push = 0x40,
    UnreadChanged = 0x41,
    Skipped = 0x42,
    GoAway = 0x43,
    Activity = 0x44,
}

impl FrameType {
    const ALL: [FrameType; 28] = [
        FrameType::Hello,
        FrameType::Welcome,
        FrameType::CreateGroup,
        FrameType::AddMembers,
        FrameType::RemoveMembers,
        FrameType::LeaveGroup,
        FrameType::ListMembers,
        FrameType::Send,
        FrameType::History,
        FrameType::ListConversations,
        FrameType::Command,
        FrameType::GetUnread,
        FrameType::MarkRead,
        FrameType::Focus,
        FrameType::Ack,
        FrameType::Done,
        FrameType::Members,
        FrameType::Sent,
        FrameType::Messages,
        FrameType::Conversations,
        FrameType::CommandResult,
        FrameType::Unread,
        FrameType::Error,
        FrameType::Push,
        FrameType::UnreadChanged,
        FrameType::Skipped,
        FrameType::GoAway,
        FrameType::Activity,
    ];

    pub fn from_byte(byte: u8) -> Option<FrameType> {
        Self::ALL.into_iter().find(|t| *t as u8 == byte)
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "Hello",
            FrameType::Welcome => "Welcome",
            FrameType::CreateGroup => "CreateGroup",
            FrameType::AddMembers => "AddMembers",
            FrameType::RemoveMembers => "RemoveMembers",
            FrameType::LeaveGroup => "LeaveGroup",
            FrameType::ListMembers => "ListMembers",
            FrameType::Send => "Send",
            FrameType::History => "History",
            FrameType::ListConversations => "ListConversations",
            FrameType::Command => "Command",
            FrameType::GetUnread => "GetUnread",
            FrameType::MarkRead => "MarkRead",
            FrameType::Focus => "Focus",
            FrameType::Ack => "Ack",
            FrameType::Done => "Done",
            FrameType::Members => "Members",
            FrameType::Sent => "Sent",
            FrameType::Messages => "Messages",
            FrameType::Conversations => "Conversations",
            FrameType::CommandResult => "CommandResult",
            FrameType::Unread => "Unread",
            FrameType::Error => "Error",
            FrameType::Push => "Push",
            FrameType::UnreadChanged => "UnreadChanged",
            FrameType::Skipped => "Skipped",
            FrameType::GoAway => "GoAway",
            FrameType::Activity => "Activity",
        }
    }
}

/// Encodes a push once; the same bytes go to every recipient.
pub fn encode_push(message: &Message) -> Bytes {
    let mut w = Writer::frame(FrameType::Push as u8, 32 + message.body.len());
    write_message(&mut w, message);
    w.finish()
}

fn write_message(w: &mut Writer, m: &Message) {
    w.str(&m.group)
        .u64(m.seq)
        .str(&m.sender)
        .u64(m.ts_ms)
        .u8(m.flags)
        .bytes(&m.body);
}

fn read_message(r: &mut Reader) -> Result<Message, DecodeError> {
    Ok(Message {
        group: r.str()?,
        seq: r.u64()?,
        sender: r.str()?,
        ts_ms: r.u64()?,
        flags: r.u8()?,
        body: r.bytes()?,
    })
}

fn write_unread(w: &mut Writer, u: &UnreadCount) {
    w.str(&u.group).u64(u.count);
}

fn read_unread(r: &mut Reader) -> Result<UnreadCount, DecodeError> {
    Ok(UnreadCount {
        group: r.str()?,
        count: r.u64()?,
    })
}

fn write_ack_policy(w: &mut Writer, policy: &AckPolicy) {
    w.u32(policy.max_delay_ms)
        .u16(policy.max_batch)
        .u32(policy.retransmit_ms);
}

fn read_ack_policy(r: &mut Reader) -> Result<AckPolicy, DecodeError> {
    Ok(AckPolicy {
        max_delay_ms: r.u32()?,
        max_batch: r.u16()?,
        retransmit_ms: r.u32()?,
    })
}

fn write_strs(w: &mut Writer, items: &[String]) {
    w.list(items, |w, s| {
        w.str(s);
    });
}

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello { .. } => FrameType::Hello,
            Frame::Welcome { .. } => FrameType::Welcome,
            Frame::CreateGroup { .. } => FrameType::CreateGroup,
            Frame::AddMembers { .. } => FrameType::AddMembers,
            Frame::RemoveMembers { .. } => FrameType::RemoveMembers,
            Frame::LeaveGroup { .. } => FrameType::LeaveGroup,
            Frame::ListMembers { .. } => FrameType::ListMembers,
            Frame::Send { .. } => FrameType::Send,
            Frame::History { .. } => FrameType::History,
            Frame::ListConversations { .. } => FrameType::ListConversations,
            Frame::Command { .. } => FrameType::Command,
            Frame::GetUnread { .. } => FrameType::GetUnread,
            Frame::MarkRead { .. } => FrameType::MarkRead,
            Frame::Focus { .. } => FrameType::Focus,
            Frame::Ack { .. } => FrameType::Ack,
            Frame::Done { .. } => FrameType::Done,
            Frame::Members { .. } => FrameType::Members,
            Frame::Sent { .. } => FrameType::Sent,
            Frame::Messages { .. } => FrameType::Messages,
            Frame::Conversations { .. } => FrameType::Conversations,
            Frame::CommandResult { .. } => FrameType::CommandResult,
            Frame::Unread { .. } => FrameType::Unread,
            Frame::Error { .. } => FrameType::Error,
            Frame::Push { .. } => FrameType::Push,
            Frame::UnreadChanged { .. } => FrameType::UnreadChanged,
            Frame::Skipped { .. } => FrameType::Skipped,
            Frame::GoAway { .. } => FrameType::GoAway,
            Frame::Activity { .. } => FrameType::Activity,
        }
    }

    /// The request id a response or request carries, if any.
    pub fn request_id(&self) -> Option<u32> {
        match self {
            Frame::CreateGroup { id, .. }
            | Frame::AddMembers { id, .. }
            | Frame::RemoveMembers { id, .. }
            | Frame::LeaveGroup { id, .. }
            | Frame::ListMembers { id, .. }
            | Frame::Send { id, .. }
            | Frame::History { id, .. }
            | Frame::ListConversations { id, .. }
            | Frame::Command { id, .. }
            | Frame::GetUnread { id }
            | Frame::MarkRead { id, .. }
            | Frame::Focus { id, .. }
            | Frame::CommandResult { id, .. }
            | Frame::Unread { id, .. }
            | Frame::Done { id }
            | Frame::Members { id, .. }
            | Frame::Sent { id, .. }
            | Frame::Messages { id, .. }
            | Frame::Conversations { id, .. }
            | Frame::Error { id, .. } => Some(*id),
            Frame::Hello { .. }
            | Frame::Welcome { .. }
            | Frame::Ack { .. }
            | Frame::Push { .. }
            | Frame::UnreadChanged { .. }
            | Frame::Skipped { .. }
            | Frame::GoAway { .. }
            | Frame::Activity { .. } => None,
        }
    }

    /// The whole frame: 4-byte length, type byte, payload.
    pub fn encode(&self) -> Bytes {
        if let Frame::Push { message } = self {
            return encode_push(message);
        }
        let mut w = Writer::frame(self.frame_type() as u8, 64);
        match self {
            Frame::Hello {
                version,
                token,
                device,
            } => {
                w.u16(*version).str(token).str(device);
            }
            Frame::Welcome {
                version,
                user,
                ack,
                catch_up_ack,
                max_frame_len,
            } => {
                w.u16(*version).str(user);
                write_ack_policy(&mut w, ack);
                write_ack_policy(&mut w, catch_up_ack);
                w.u32(*max_frame_len);
            }
            Frame::CreateGroup { id, group, members } => {
                w.u32(*id).str(group);
                write_strs(&mut w, members);
            }
            Frame::AddMembers { id, group, users } | Frame::RemoveMembers { id, group, users } => {
                w.u32(*id).str(group);
                write_strs(&mut w, users);
            }
            Frame::LeaveGroup { id, group } => {
                w.u32(*id).str(group);
            }
            Frame::ListMembers {
                id,
                group,
                after,
                limit,
            } => {
                w.u32(*id).str(group).str(after).u16(*limit);
            }
            Frame::Send {
                id,
                group,
                msg_id,
                body,
                to,
            } => {
                w.u32(*id).str(group).str(msg_id).bytes(body);
                write_strs(&mut w, to);
            }
            Frame::History {
                id,
                group,
                page,
                limit,
            } => {
                let (direction, seq) = match page {
                    HistoryPage::Before(seq) => (0, *seq),
                    HistoryPage::After(seq) => (1, *seq),
                };
                w.u32(*id).str(group).u8(direction).u64(seq).u16(*limit);
            }
            Frame::ListConversations { id, limit } => {
                w.u32(*id).u16(*limit);
            }
            Frame::Command {
                id,
                group,
                name,
                args,
            } => {
                w.u32(*id).str(group).str(name);
                write_strs(&mut w, args);
            }
            Frame::CommandResult { id, text } => {
                w.u32(*id).str(text);
            }
            Frame::GetUnread { id } => {
                w.u32(*id);
            }
            Frame::MarkRead { id, group, seq } => {
                w.u32(*id).str(group).u64(*seq);
            }
            Frame::Unread { id, total, groups } => {
                w.u32(*id).u64(*total).list(groups, write_unread);
            }
            Frame::UnreadChanged { groups } => {
                w.list(groups, write_unread);
            }
            Frame::Skipped { group, first, last } => {
                w.str(group).u64(*first).u64(*last);
            }
            Frame::GoAway {
                deadline_ms,
                server,
            } => {
                w.u32(*deadline_ms).str(server);
            }
            Frame::Focus { id, groups } => {
                w.u32(*id);
                write_strs(&mut w, groups);
            }
            Frame::Activity { groups } => {
                w.list(groups, |w, a| {
                    w.str(&a.group).u64(a.seq).u64(a.pending);
                });
            }
            Frame::Ack { ranges } => {
                w.list(ranges, |w, r| {
                    w.str(&r.group).u64(r.first).u64(r.last);
                });
            }
            Frame::Done { id } => {
                w.u32(*id);
            }
            Frame::Members { id, members } => {
                w.u32(*id).list(members, |w, m| {
                    let role = match m.role {
                        Role::Member => 0,
                        Role::Owner => 1,
                    };
                    w.str(&m.user).u8(role).u64(m.joined_seq);
                });
            }
            Frame::Sent {
                id,
                group,
                seq,
                ts_ms,
                duplicate,
            } => {
                w.u32(*id)
                    .str(group)
                    .u64(*seq)
                    .u64(*ts_ms)
                    .u8(*duplicate as u8);
            }
            Frame::Messages { id, messages } => {
                w.u32(*id).list(messages, write_message);
            }
            Frame::Conversations { id, conversations } => {
                w.u32(*id).list(conversations, |w, c| {
                    w.str(&c.group).u64(c.head_seq).u64(c.last_ts_ms);
                });
            }
            Frame::Error { id, code, message } => {
                w.u32(*id).u16(code.0).str(message);
            }
            Frame::Push { .. } => unreachable!("encoded above"),
        }
        w.finish()
    }

    /// Decodes one frame from its type byte and payload (the length prefix removed).
    pub fn decode(mut frame: Bytes) -> Result<Frame, DecodeError> {
        if frame.is_empty() {
            return Err(DecodeError::Empty);
        }
        let type_byte = frame[0];
        let frame_type =
            FrameType::from_byte(type_byte).ok_or(DecodeError::UnknownType(type_byte))?;
        let mut r = Reader::new(frame.split_off(1), frame_type.name());
        let decoded = match frame_type {
            FrameType::Hello => Frame::Hello {
                version: r.u16()?,
                token: r.str()?,
                device: r.str()?,
            },
            FrameType::Welcome => Frame::Welcome {
                version: r.u16()?,
                user: r.str()?,
                ack: read_ack_policy(&mut r)?,
                catch_up_ack: read_ack_policy(&mut r)?,
                max_frame_len: r.u32()?,
            },
            FrameType::CreateGroup => Frame::CreateGroup {
                id: r.u32()?,
                group: r.str()?,
                members: r.list(Reader::str)?,
            },
            FrameType::AddMembers => Frame::AddMembers {
                id: r.u32()?,
                group: r.str()?,
                users: r.list(Reader::str)?,
            },
            FrameType::RemoveMembers => Frame::RemoveMembers {
                id: r.u32()?,
                group: r.str()?,
                users: r.list(Reader::str)?,
            },
            FrameType::LeaveGroup => Frame::LeaveGroup {
                id: r.u32()?,
                group: r.str()?,
            },
            FrameType::ListMembers => Frame::ListMembers {
                id: r.u32()?,
                group: r.str()?,
                after: r.str()?,
                limit: r.u16()?,
            },
            FrameType::Send => Frame::Send {
                id: r.u32()?,
                group: r.str()?,
                msg_id: r.str()?,
                body: r.bytes()?,
                to: r.list(Reader::str)?,
            },
            FrameType::History => {
                let id = r.u32()?;
                let group = r.str()?;
                let page = match r.u8()? {
                    0 => HistoryPage::Before(r.u64()?),
                    1 => HistoryPage::After(r.u64()?),
                    other => return Err(r.error(format!("history direction {other}"))),
                };
                Frame::History {
                    id,
                    group,
                    page,
                    limit: r.u16()?,
                }
            }
            FrameType::ListConversations => Frame::ListConversations {
                id: r.u32()?,
                limit: r.u16()?,
            },
            FrameType::Command => Frame::Command {
                id: r.u32()?,
                group: r.str()?,
                name: r.str()?,
                args: r.list(Reader::str)?,
            },
            FrameType::CommandResult => Frame::CommandResult {
                id: r.u32()?,
                text: r.str()?,
            },
            FrameType::GetUnread => Frame::GetUnread { id: r.u32()? },
            FrameType::MarkRead => Frame::MarkRead {
                id: r.u32()?,
                group: r.str()?,
                seq: r.u64()?,
            },
            FrameType::Unread => Frame::Unread {
                id: r.u32()?,
                total: r.u64()?,
                groups: r.list(read_unread)?,
            },
            FrameType::UnreadChanged => Frame::UnreadChanged {
                groups: r.list(read_unread)?,
            },
            FrameType::Skipped => Frame::Skipped {
                group: r.str()?,
                first: r.u64()?,
                last: r.u64()?,
            },
            FrameType::GoAway => Frame::GoAway {
                deadline_ms: r.u32()?,
                server: r.str()?,
            },
            FrameType::Focus => Frame::Focus {
                id: r.u32()?,
                groups: r.list(Reader::str)?,
            },
            FrameType::Activity => Frame::Activity {
                groups: r.list(|r| {
                    Ok(GroupActivity {
                        group: r.str()?,
                        seq: r.u64()?,
                        pending: r.u64()?,
                    })
                })?,
            },
            FrameType::Ack => Frame::Ack {
                ranges: r.list(|r| {
                    Ok(AckRange {
                        group: r.str()?,
                        first: r.u64()?,
                        last: r.u64()?,
                    })
                })?,
            },
            FrameType::Done => Frame::Done { id: r.u32()? },
            FrameType::Members => Frame::Members {
                id: r.u32()?,
                members: r.list(|r| {
                    let user = r.str()?;
                    let role = match r.u8()? {
                        0 => Role::Member,
                        1 => Role::Owner,
                        other => return Err(r.error(format!("role {other}"))),
                    };
                    Ok(MemberInfo {
                        user,
                        role,
                        joined_seq: r.u64()?,
                    })
                })?,
            },
            FrameType::Sent => Frame::Sent {
                id: r.u32()?,
                group: r.str()?,
                seq: r.u64()?,
                ts_ms: r.u64()?,
                duplicate: r.bool()?,
            },
            FrameType::Messages => Frame::Messages {
                id: r.u32()?,
                messages: r.list(read_message)?,
            },
            FrameType::Conversations => Frame::Conversations {
                id: r.u32()?,
                conversations: r.list(|r| {
                    Ok(Conversation {
                        group: r.str()?,
                        head_seq: r.u64()?,
                        last_ts_ms: r.u64()?,
                    })
                })?,
            },
            FrameType::Error => Frame::Error {
                id: r.u32()?,
                code: ErrorCode(r.u16()?),
                message: r.str()?,
            },
            FrameType::Push => Frame::Push {
                message: read_message(&mut r)?,
            },
        };
        r.end()?;
        Ok(decoded)
    }
}
