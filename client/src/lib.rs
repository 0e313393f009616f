//! Reference client for the chat gateway: a [`Client`] speaking `chat/1` over QUIC.
//!
//! One control stream carries requests (matched to responses by id, so they may be
//! pipelined) and batched acks; the gateway's push stream feeds
//! [`Client::next_message`], which deduplicates retransmissions and acknowledges
//! what the application takes (at-least-once delivery), each push under the Welcome's
//! live or catch-up ACK policy as its [`Message::FLAG_CATCH_UP`] bit says.
//!
//! Messages hidden from this user (deleted for them, or private to others) arrive, in
//! pushes and history alike, as placeholders with their seq but no sender or body:
//! [`Message::is_hidden`] tells them apart.

mod acks;
mod client;
mod dedup;
mod error;
mod session;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use acks::AckClock;
pub use chat_protocol::{
    AckPolicy, Conversation, ErrorCode, GroupActivity, HistoryPage, MemberInfo, Message, Role,
    UnreadCount,
};
pub use client::Client;
pub use error::ClientError;
pub use tls::quic_client_config;

/// Where and as whom to connect.
#[derive(Clone)]
pub struct ConnectOptions {
    pub server: SocketAddr,
    /// Name the server certificate must be valid for.
    pub server_name: String,
    /// PEM file with the certificate(s) to trust for the server.
    pub ca_pem: PathBuf,
    /// Bearer token; may be empty, so the gateway reports `missing_token` itself.
    pub token: String,
    pub device: String,
    /// Replace a lost connection in the background (see [`Client`]). Off by default.
    pub reconnect: bool,
    /// Other gateways of the same deployment, tried in turn after `server` when
    /// (re)connecting with `reconnect` on.
    pub failover: Vec<SocketAddr>,
    /// How long a send keeps retrying a transient failure (`unavailable`,
    /// `shutting_down`, or with `reconnect` a lost connection) with the same message id.
    /// Zero: no retry.
    pub send_retry: Duration,
    /// A gateway silent this long counts as gone (QUIC idle timeout; keep-alives are
    /// sent every third of it). Shorter finds a dead gateway sooner, at the cost of
    /// more keep-alive packets. The gateway's own limit applies if lower.
    pub idle_timeout: Duration,
}

impl ConnectOptions {
    /// Options with server name `localhost` and device `default`.
    pub fn new(server: SocketAddr, ca_pem: impl Into<PathBuf>, token: impl Into<String>) -> Self {
        Self {
            server,
            server_name: "localhost".into(),
            ca_pem: ca_pem.into(),
            token: token.into(),
            device: "default".into(),
            reconnect: false,
            failover: Vec::new(),
            send_retry: DEFAULT_SEND_RETRY,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }

    /// `server`, then the `failover` gateways.
    pub(crate) fn servers(&self) -> Vec<SocketAddr> {
        std::iter::once(self.server)
            .chain(self.failover.iter().copied())
            .collect()
    }
}

/// How long sends retry transient failures unless [`ConnectOptions::send_retry`] says otherwise.
pub const DEFAULT_SEND_RETRY: Duration = Duration::from_secs(10);

/// [`ConnectOptions::idle_timeout`] unless set otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

// By hand, so logging the options never leaks the token.
impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("server", &self.server)
            .field("server_name", &self.server_name)
            .field("ca_pem", &self.ca_pem)
            .field("token", &"<redacted>")
            .field("device", &self.device)
            .field("reconnect", &self.reconnect)
            .field("failover", &self.failover)
            .field("send_retry", &self.send_retry)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// A user's unread counts: the groups with unread messages and the sum over all groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadCounts {
    pub total: u64,
    pub groups: Vec<UnreadCount>,
}

/// Messages `first..=last` of `group` the gateway did not push on connect because the
/// device was too far behind: fetch them with [`Client::history`] if needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub group: String,
    pub first: u64,
    pub last: u64,
}

/// The gateway's acceptance of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub group: String,
    pub seq: u64,
    pub ts_ms: u64,
    /// The message id was seen before: `seq` and `ts_ms` are the original's.
    pub duplicate: bool,
}
