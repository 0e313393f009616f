//! The SDK's own types, mirroring `chat:gateway/types` of the WIT, and their conversions
//! to and from the generated bindings (hidden from the docs: plugin authors never see the
//! generated types).

use crate::__private::bindings::chat::gateway::types as wit;

/// A message a member is sending, before it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outgoing {
    /// The group it is sent to.
    pub group: String,
    /// The sending user.
    pub sender: String,
    /// The body, opaque bytes (usually UTF-8 text); at most 16 KiB.
    pub body: Vec<u8>,
    /// Members the sender addressed privately (`chat send --to`); empty for the whole group.
    pub to: Vec<String>,
}

/// What [`Plugin::on_send`](crate::Plugin::on_send) decides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SendVerdict {
    /// Store the message as it is.
    Accept,
    /// Refuse it; the sender sees this text (error code `rejected`).
    Reject(String),
    /// Store it with these changes.
    Modify(Changes),
}

/// Changes a send hook makes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Changes {
    /// A new body (at most 16 KiB).
    pub body: Option<Vec<u8>>,
    /// Only these users (and the sender) may see the message. Visibility only narrows:
    /// when several plugins restrict, a user must be in every list.
    pub visible_to: Option<Vec<String>>,
}

/// A stored message, as [`Plugin::filter_read`](crate::Plugin::filter_read) sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stored {
    /// Its sequence number in the group.
    pub seq: u64,
    /// The user who sent it.
    pub sender: String,
    /// When the gateway stored it, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The body.
    pub body: Vec<u8>,
}

/// How receivers acknowledge pushes (see docs/protocol.md, "Push, ACK, retransmit").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckPolicy {
    /// Longest a receiver may hold an ACK back to batch it.
    pub max_delay_ms: u32,
    /// A receiver ACKs at once when this many pushes are waiting.
    pub max_batch: u16,
    /// The gateway resends a push not acknowledged within this time.
    pub retransmit_ms: u32,
}

/// Live pushes, or catching up after being offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Delivery {
    /// Messages pushed as they are sent.
    Live,
    /// Messages a connection receives to catch up after being offline.
    CatchUp,
}

/// The level of a [`Host::log`](crate::Host::log) line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// The hooks a plugin implements; the gateway calls only those listed in [`Info::hooks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// [`Plugin::on_send`](crate::Plugin::on_send).
    Send,
    /// [`Plugin::filter_read`](crate::Plugin::filter_read).
    Read,
    /// [`Plugin::on_command`](crate::Plugin::on_command), for the commands in
    /// [`Info::commands`].
    Command,
    /// [`Plugin::ack_policy`](crate::Plugin::ack_policy).
    AckPolicy,
}

/// What [`Plugin::info`](crate::Plugin::info) returns: read once, when the gateway loads
/// the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Info {
    /// The plugin's name, e.g. `"word-filter"`.
    pub name: String,
    /// Its version, e.g. `env!("CARGO_PKG_VERSION")`.
    pub version: String,
    /// The hooks it implements.
    pub hooks: Vec<Hook>,
    /// Client commands it owns (e.g. `"delete"`); each is routed to `on_command`.
    pub commands: Vec<String>,
}

// ---- conversions to and from the generated types ----

#[doc(hidden)]
impl From<wit::Outgoing> for Outgoing {
    fn from(m: wit::Outgoing) -> Self {
        Self {
            group: m.group,
            sender: m.sender,
            body: m.body,
            to: m.to,
        }
    }
}

#[doc(hidden)]
impl From<Outgoing> for wit::Outgoing {
    fn from(m: Outgoing) -> Self {
        Self {
            group: m.group,
            sender: m.sender,
            body: m.body,
            to: m.to,
        }
    }
}

#[doc(hidden)]
impl From<wit::Changes> for Changes {
    fn from(c: wit::Changes) -> Self {
        Self {
            body: c.body,
            visible_to: c.visible_to,
        }
    }
}

#[doc(hidden)]
impl From<Changes> for wit::Changes {
    fn from(c: Changes) -> Self {
        Self {
            body: c.body,
            visible_to: c.visible_to,
        }
    }
}

#[doc(hidden)]
impl From<wit::SendVerdict> for SendVerdict {
    fn from(v: wit::SendVerdict) -> Self {
        match v {
            wit::SendVerdict::Accept => Self::Accept,
            wit::SendVerdict::Reject(why) => Self::Reject(why),
            wit::SendVerdict::Modify(changes) => Self::Modify(changes.into()),
        }
    }
}

#[doc(hidden)]
impl From<SendVerdict> for wit::SendVerdict {
    fn from(v: SendVerdict) -> Self {
        match v {
            SendVerdict::Accept => Self::Accept,
            SendVerdict::Reject(why) => Self::Reject(why),
            SendVerdict::Modify(changes) => Self::Modify(changes.into()),
        }
    }
}

#[doc(hidden)]
impl From<wit::Stored> for Stored {
    fn from(m: wit::Stored) -> Self {
        Self {
            seq: m.seq,
            sender: m.sender,
            ts_ms: m.ts_ms,
            body: m.body,
        }
    }
}

#[doc(hidden)]
impl From<Stored> for wit::Stored {
    fn from(m: Stored) -> Self {
        Self {
            seq: m.seq,
            sender: m.sender,
            ts_ms: m.ts_ms,
            body: m.body,
        }
    }
}

#[doc(hidden)]
impl From<wit::AckPolicy> for AckPolicy {
    fn from(p: wit::AckPolicy) -> Self {
        Self {
            max_delay_ms: p.max_delay_ms,
            max_batch: p.max_batch,
            retransmit_ms: p.retransmit_ms,
        }
    }
}

#[doc(hidden)]
impl From<AckPolicy> for wit::AckPolicy {
    fn from(p: AckPolicy) -> Self {
        Self {
            max_delay_ms: p.max_delay_ms,
            max_batch: p.max_batch,
            retransmit_ms: p.retransmit_ms,
        }
    }
}

#[doc(hidden)]
impl From<wit::Delivery> for Delivery {
    fn from(d: wit::Delivery) -> Self {
        match d {
            wit::Delivery::Live => Self::Live,
            wit::Delivery::CatchUp => Self::CatchUp,
        }
    }
}

#[doc(hidden)]
impl From<Delivery> for wit::Delivery {
    fn from(d: Delivery) -> Self {
        match d {
            Delivery::Live => Self::Live,
            Delivery::CatchUp => Self::CatchUp,
        }
    }
}

#[doc(hidden)]
impl From<wit::Level> for Level {
    fn from(l: wit::Level) -> Self {
        match l {
            wit::Level::Trace => Self::Trace,
            wit::Level::Debug => Self::Debug,
            wit::Level::Info => Self::Info,
            wit::Level::Warn => Self::Warn,
            wit::Level::Error => Self::Error,
        }
    }
}

#[doc(hidden)]
impl From<Level> for wit::Level {
    fn from(l: Level) -> Self {
        match l {
            Level::Trace => Self::Trace,
            Level::Debug => Self::Debug,
            Level::Info => Self::Info,
            Level::Warn => Self::Warn,
            Level::Error => Self::Error,
        }
    }
}

#[doc(hidden)]
impl From<wit::Hook> for Hook {
    fn from(h: wit::Hook) -> Self {
        match h {
            wit::Hook::Send => Self::Send,
            wit::Hook::Read => Self::Read,
            wit::Hook::Command => Self::Command,
            wit::Hook::AckPolicy => Self::AckPolicy,
        }
    }
}

#[doc(hidden)]
impl From<Hook> for wit::Hook {
    fn from(h: Hook) -> Self {
        match h {
            Hook::Send => Self::Send,
            Hook::Read => Self::Read,
            Hook::Command => Self::Command,
            Hook::AckPolicy => Self::AckPolicy,
        }
    }
}

#[doc(hidden)]
impl From<wit::Info> for Info {
    fn from(i: wit::Info) -> Self {
        Self {
            name: i.name,
            version: i.version,
            hooks: i.hooks.into_iter().map(Into::into).collect(),
            commands: i.commands,
        }
    }
}

#[doc(hidden)]
impl From<Info> for wit::Info {
    fn from(i: Info) -> Self {
        Self {
            name: i.name,
            version: i.version,
            hooks: i.hooks.into_iter().map(Into::into).collect(),
            commands: i.commands,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let verdict = SendVerdict::Modify(Changes {
            body: Some(b"hi".to_vec()),
            visible_to: Some(vec!["bob".into()]),
        });
        let back: SendVerdict = wit::SendVerdict::from(verdict.clone()).into();
        assert_eq!(back, verdict);
        for v in [SendVerdict::Accept, SendVerdict::Reject("no".into())] {
            assert_eq!(SendVerdict::from(wit::SendVerdict::from(v.clone())), v);
        }

        let info = Info {
            name: "x".into(),
            version: "1".into(),
            hooks: vec![Hook::Send, Hook::Read, Hook::Command, Hook::AckPolicy],
            commands: vec!["delete".into()],
        };
        assert_eq!(Info::from(wit::Info::from(info.clone())), info);

        let out = Outgoing {
            group: "g".into(),
            sender: "s".into(),
            body: vec![1, 2],
            to: vec!["t".into()],
        };
        assert_eq!(Outgoing::from(wit::Outgoing::from(out.clone())), out);

        let stored = Stored {
            seq: 7,
            sender: "s".into(),
            ts_ms: 9,
            body: vec![3],
        };
        assert_eq!(Stored::from(wit::Stored::from(stored.clone())), stored);

        let policy = AckPolicy {
            max_delay_ms: 1,
            max_batch: 2,
            retransmit_ms: 3,
        };
        assert_eq!(AckPolicy::from(wit::AckPolicy::from(policy)), policy);

        for d in [Delivery::Live, Delivery::CatchUp] {
            assert_eq!(Delivery::from(wit::Delivery::from(d)), d);
        }
        for l in [
            Level::Trace,
            Level::Debug,
            Level::Info,
            Level::Warn,
            Level::Error,
        ] {
            assert_eq!(Level::from(wit::Level::from(l)), l);
        }
    }
}
