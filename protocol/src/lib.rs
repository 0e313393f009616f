//! The `chat/1` wire protocol, without I/O.
//!
//! Everything a client or a gateway needs to speak the protocol lives here: the
//! [`Frame`] enum, its binary encoding ([`Frame::encode`], [`FrameDecoder`]) and the
//! [`ErrorCode`]s. Nothing here touches a socket or a clock, so both sides are
//! tested deterministically. `docs/protocol.md` is the language-neutral description
//! of the same bytes.

mod codec;
mod error;
mod frame;

pub use codec::{DecodeError, FrameDecoder};
pub use error::ErrorCode;
pub use frame::{
    AckPolicy, AckRange, Conversation, Frame, FrameType, GroupActivity, HistoryPage, MemberInfo,
    Message, Role, UnreadCount, encode_push,
};

/// ALPN protocol id negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"chat/1";
/// The protocol version carried in `Hello` and `Welcome`.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame accepted, counting the type byte and payload (not the 4-byte length).
pub const MAX_FRAME_LEN: usize = 256 * 1024;
/// Largest message body accepted by `Send`.
pub const MAX_BODY_LEN: usize = 16 * 1024;
/// Longest user id, group id, device id or client message id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Most entries a list in one frame may carry (members, messages, ack ranges).
pub const MAX_LIST_LEN: usize = 10_000;
/// Most messages one `History` request returns.
pub const MAX_PAGE: u16 = 500;

/// Sender ids starting with this are the gateway's plugins (their notices); no user has one.
pub const PLUGIN_SENDER_PREFIX: &str = "plugin:";

/// Checks a user id: a valid id that does not pose as a plugin.
pub fn valid_user_id(id: &str) -> bool {
    valid_id(id) && !id.starts_with(PLUGIN_SENDER_PREFIX)
}

/// Checks a user, group, device or message id: 1..=64 bytes of `[A-Za-z0-9_.@:-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b':'))
}

#[cfg(test)]
mod tests;
