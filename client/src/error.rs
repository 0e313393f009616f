use chat_protocol::ErrorCode;
use quinn::ConnectionError;

/// Everything a [`Client`](crate::Client) call can fail with.
///
/// `Refused` and `Server` display as `<code name> (<code number>): <text>`, the
/// format the `chat` CLI prints after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway closed the connection (auth refused, protocol error, shutdown).
    #[error("{code}: {reason}")]
    Refused { code: ErrorCode, reason: String },
    /// The gateway answered a request with an `Error` frame.
    #[error("{code}: {message}")]
    Server { code: ErrorCode, message: String },
    /// TLS, CA file or connection set-up problems.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection is gone (closed locally, timed out, reset).
    #[error("connection closed")]
    Closed,
    /// The gateway sent something this client cannot accept.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The protocol error code, for `Refused` and `Server` errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } | ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the connection failed for a reason that may pass: a lost or unreachable
    /// gateway, or a refusal whose code is retryable (`shutting_down`, ...). A bad token
    /// or a protocol mismatch is not.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Closed | ClientError::Connect(_) | ClientError::Io(_) => true,
            ClientError::Refused { code, .. } | ClientError::Server { code, .. } => {
                code.is_retryable()
            }
            ClientError::Protocol(_) => false,
        }
    }

    /// The error a lost connection means after the handshake: a peer application
    /// close carries the gateway's code and reason; code 0 (a normal close) and
    /// anything else is just `Closed`.
    pub(crate) fn from_connection(err: &ConnectionError) -> ClientError {
        match err {
            ConnectionError::ApplicationClosed(close) if close.error_code.into_inner() != 0 => {
                ClientError::Refused {
                    code: ErrorCode(
                        u16::try_from(close.error_code.into_inner()).unwrap_or(u16::MAX),
                    ),
                    reason: String::from_utf8_lossy(&close.reason).into_owned(),
                }
            }
            other => {
                tracing::debug!(error = %other, "connection lost");
                ClientError::Closed
            }
        }
    }

    /// Like [`from_connection`](Self::from_connection), but during set-up, where a
    /// transport failure (bad certificate, timeout) is a connect problem.
    pub(crate) fn from_handshake(err: &ConnectionError) -> ClientError {
        match err {
            ConnectionError::ApplicationClosed(_) => Self::from_connection(err),
            other => ClientError::Connect(other.to_string()),
        }
    }
}

// Manual because `io::Error` is not `Clone`; the close reason is handed to every waiter.
impl Clone for ClientError {
    fn clone(&self) -> Self {
        match self {
            ClientError::Refused { code, reason } => ClientError::Refused {
                code: *code,
                reason: reason.clone(),
            },
            ClientError::Server { code, message } => ClientError::Server {
                code: *code,
                message: message.clone(),
            },
            ClientError::Connect(s) => ClientError::Connect(s.clone()),
            ClientError::Closed => ClientError::Closed,
            ClientError::Protocol(s) => ClientError::Protocol(s.clone()),
            ClientError::Io(e) => ClientError::Io(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}
