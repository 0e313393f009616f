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

pub use chat_protocol::{
    AckPolicy, Conversation, ErrorCode, HistoryPage, MemberInfo, Message, Role,
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
        }
    }
}

// By hand, so logging the options never leaks the token.
impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("server", &self.server)
            .field("server_name", &self.server_name)
            .field("ca_pem", &self.ca_pem)
            .field("token", &"<redacted>")
            .field("device", &self.device)
            .finish()
    }
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
