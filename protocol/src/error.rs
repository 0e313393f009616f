use std::fmt;

/// A protocol error code, carried by `Error` frames and used as the QUIC
/// application close code when the gateway closes a connection.
///
/// A newtype rather than an enum so that a client keeps working when a newer
/// gateway sends a code it does not know yet.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($($name:ident = $value:literal, $text:literal, $retry:literal;)*) => {
        impl ErrorCode {
            $(pub const $name: ErrorCode = ErrorCode($value);)*

            /// The stable snake_case name documented in `docs/protocol.md`.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($value => $text,)*
                    _ => "unknown",
                }
            }

            /// Whether the same request may succeed if retried later, unchanged.
            pub fn is_retryable(self) -> bool {
                match self.0 {
                    $($value => $retry,)*
                    _ => false,
                }
            }
        }
    };
}

codes! {
    MALFORMED_FRAME = 1, "malformed_frame", false;
    FRAME_TOO_LARGE = 2, "frame_too_large", false;
    UNKNOWN_FRAME = 3, "unknown_frame", false;
    UNSUPPORTED_VERSION = 4, "unsupported_version", false;
    PROTOCOL_VIOLATION = 5, "protocol_violation", false;
    MISSING_TOKEN = 10, "missing_token", false;
    INVALID_TOKEN = 11, "invalid_token", false;
    TOKEN_EXPIRED = 12, "token_expired", false;
    NOT_MEMBER = 20, "not_member", false;
    NOT_OWNER = 21, "not_owner", false;
    NO_SUCH_GROUP = 22, "no_such_group", false;
    GROUP_EXISTS = 23, "group_exists", false;
    INVALID_ARGUMENT = 24, "invalid_argument", false;
    BODY_TOO_LARGE = 25, "body_too_large", false;
    REJECTED = 26, "rejected", false;
    UNKNOWN_COMMAND = 27, "unknown_command", false;
    INTERNAL = 30, "internal", true;
    UNAVAILABLE = 31, "unavailable", true;
    SHUTTING_DOWN = 32, "shutting_down", true;
    PLUGIN_FAILED = 34, "plugin_failed", true;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
