//! One client connection: handshake (Hello → Welcome), then the control loop answering
//! requests; its pusher, in the endpoint loop, writes the push stream.

use std::sync::Arc;
use std::time::Duration;

use chat_protocol::{
    AckPolicy, DecodeError, ErrorCode, Frame, FrameDecoder, MAX_FRAME_LEN, PROTOCOL_VERSION,
    valid_id,
};
use quinn::VarInt;

use super::pushers::{PushCommand, Registration};
use super::{Shared, pusher};
use crate::config::Background;
use crate::node::{ConnId, Control};
use crate::quic::{ConnKey, Link};
use crate::store::{Membership, Store, StoreError};

/// How long a leaving connection's last ACKs may take to apply.
const FINISH_GRACE: Duration = Duration::from_secs(2);

/// Why the gateway closes a connection: sent as the QUIC application close code and reason.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub reason: String,
}

impl Refusal {
    fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }

    fn close(&self, link: &Link) {
        link.close(VarInt::from_u32(self.code.0.into()), self.reason.as_bytes());
    }
}

/// A decode error that ends the connection, or the `Error` frame that reports one that does not.
fn classify(error: DecodeError) -> Result<Frame, Refusal> {
    let code = match &error {
        DecodeError::TooLarge(_) => {
            return Err(Refusal::new(ErrorCode::FRAME_TOO_LARGE, error.to_string()));
        }
        DecodeError::Empty => {
            return Err(Refusal::new(ErrorCode::MALFORMED_FRAME, error.to_string()));
        }
        DecodeError::UnknownType(_) => ErrorCode::UNKNOWN_FRAME,
        DecodeError::Malformed { .. } => ErrorCode::MALFORMED_FRAME,
    };
    Ok(Frame::Error {
        id: 0,
        code,
        message: error.to_string(),
    })
}

/// An authenticated connection, and what its control stream had past the Hello.
struct Session {
    user: String,
    device: String,
    decoder: FrameDecoder,
}

pub(crate) async fn serve(connection: Link, shared: Arc<Shared>) {
    let remote = connection.remote_address();
    let hello_timeout = Duration::from_secs(shared.config.transport.hello_timeout_s);
    // Steps that run once or now and then are boxed: a future holds the largest state of
    // any of its awaits for as long as it lives, and 10,000 idle connections would each
    // keep that much (a plugin call, a store read) for nothing.
    let handshake = Box::pin(handshake(&connection, &shared));
    let session = match tokio::time::timeout(hello_timeout, handshake).await {
        Ok(Ok(session)) => session,
        Ok(Err(refusal)) => {
            tracing::info!(%remote, code = %refusal.code, reason = %refusal.reason, "connection refused");
            shared.metrics.reject(refusal.code.name());
            refusal.close(&connection);
            return;
        }
        Err(_) => {
            tracing::info!(%remote, "connection refused: no Hello in time");
            shared.metrics.reject("hello_timeout");
            Refusal::new(ErrorCode::PROTOCOL_VIOLATION, "no Hello in time").close(&connection);
            return;
        }
    };
    shared.metrics.opened.inc();
    tracing::info!(%remote, user = %session.user, device = %session.device, "connected");
    let user = session.user.clone();
    let outcome = run(&connection, &shared, session).await;
    match &outcome {
        Ok(()) => {
            let reason = ended_by(&connection);
            tracing::info!(%remote, %user, reason, "disconnected");
            shared.metrics.close(reason);
            connection.close(VarInt::from_u32(0), b"bye");
        }
        Err(refusal) => {
            tracing::info!(%remote, %user, code = %refusal.code, reason = %refusal.reason, "closing connection");
            shared.metrics.close(refusal.code.name());
            refusal.close(&connection);
        }
    }
}

/// How a connection the gateway did not close itself ended: a label for metrics and logs.
fn ended_by(connection: &Link) -> &'static str {
    match connection.close_reason() {
        None | Some(quinn::ConnectionError::ApplicationClosed(_)) => "client_closed",
        Some(quinn::ConnectionError::TimedOut) => "idle_timeout",
        Some(quinn::ConnectionError::LocallyClosed) => "shutting_down",
        Some(quinn::ConnectionError::Reset) => "reset",
        Some(_) => "transport_error",
    }
}

async fn handshake(connection: &Link, shared: &Shared) -> Result<Session, Refusal> {
    let mut decoder = FrameDecoder::new();
    let frame = loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => break frame,
            Ok(None) => {}
            Err(error) => {
                return Err(classify(error).map_or_else(
                    |r| r,
                    |_| {
                        Refusal::new(
                            ErrorCode::PROTOCOL_VIOLATION,
                            "the first frame must be Hello",
                        )
                    },
                ));
            }
        }
        match connection.read_control().await {
            Some(bytes) => decoder.extend(&bytes),
            None => {
                return Err(Refusal::new(
                    ErrorCode::PROTOCOL_VIOLATION,
                    "control stream ended before Hello",
                ));
            }
        }
    };
    let Frame::Hello {
        version,
        token,
        device,
    } = frame
    else {
        let name = frame.frame_type().name();
        return Err(Refusal::new(
            ErrorCode::PROTOCOL_VIOLATION,
            format!("the first frame must be Hello, not {name}"),
        ));
    };
    if version != PROTOCOL_VERSION {
        return Err(Refusal::new(
            ErrorCode::UNSUPPORTED_VERSION,
            format!(
                "protocol version {version} is not supported; this gateway speaks {PROTOCOL_VERSION}"
            ),
        ));
    }
    let user = shared
        .auth
        .verify(&token)
        .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
    let device = if device.is_empty() {
        "default".to_owned()
    } else {
        device
    };
    if !valid_id(&device) {
        return Err(Refusal::new(
            ErrorCode::INVALID_ARGUMENT,
            format!("invalid device id {device:?}"),
        ));
    }
    Ok(Session {
        user,
        device,
        decoder,
    })
}

/// Where this device's delivery starts. Read after subscribing: anything newer arrives
/// live, or as a gap caught up later.
///
/// The offline buffer names the groups that got messages for the user: one read instead
/// of one head per group. When it evicted entries this device may not have had, every
/// group's head is read instead (the buffer position is read first, so the heads cover it).
async fn resume(
    store: &dyn Store,
    user: &str,
    device: &str,
    groups: Vec<Membership>,
) -> Result<pusher::Resume, StoreError> {
    let cursors = store.cursors(user, device).await?;
    let buffer = store.offline(user, device).await?;
    let latest = if buffer.covers_device() {
        buffer.entries.into_iter().collect()
    } else {
        store
            .conversations(user)
            .await?
            .into_iter()
            .map(|(m, info)| (m.group, info.head_seq))
            .collect()
    };
    Ok(pusher::Resume {
        groups,
        cursors,
        latest,
        position: buffer.head,
    })
}

/// Registers the connection, welcomes it and runs it until it ends.
async fn run(connection: &Link, shared: &Arc<Shared>, session: Session) -> Result<(), Refusal> {
    let Session {
        user,
        device,
        decoder,
    } = session;
    let node = &shared.node;
    // Before the node knows the connection: the pushers hold what the fan-out sends it
    // until it is welcomed.
    let registration = Registration::new(&shared.pushes, connection.key());
    let (attached, groups) = Box::pin(node.attach(&user, registration.conn))
        .await
        .map_err(|e| unavailable(&e))?;
    let id = attached.id;
    let result = async {
        let start = welcome(connection, shared, &user, &device, groups);
        let Welcomed { resume, policies } = Box::pin(start).await?;
        let pusher = pusher::Pusher::new(
            shared,
            registration.conn,
            (&user, &device),
            &resume,
            policies,
            attached.flags,
        );
        drop(resume);
        shared
            .pushes
            .send(PushCommand::Start(registration.conn, Box::new(pusher)));
        control_loop(shared, &user, (id, registration.conn), connection, decoder).await
    }
    .await;
    // The client is leaving: let its pusher apply the ACKs that came before, and write
    // the cursors they moved, so that a reconnect elsewhere resumes from there.
    if tokio::time::timeout(FINISH_GRACE, registration.finish())
        .await
        .is_ok()
    {
        Box::pin(shared.cursors.flush()).await;
    }
    Box::pin(node.detach(id)).await;
    result
}

fn unavailable(error: &dyn std::fmt::Display) -> Refusal {
    Refusal::new(
        ErrorCode::UNAVAILABLE,
        format!("store unavailable: {error}"),
    )
}

/// A connection past `Welcome`, ready to serve.
struct Welcomed {
    resume: pusher::Resume,
    policies: (AckPolicy, AckPolicy),
}

/// Reads where delivery resumes, asks the plugins for the ACK policies and sends `Welcome`.
async fn welcome(
    connection: &Link,
    shared: &Shared,
    user: &str,
    device: &str,
    groups: Vec<Membership>,
) -> Result<Welcomed, Refusal> {
    let node = &shared.node;
    let resume = resume(node.store.as_ref(), user, device, groups)
        .await
        .map_err(|e| unavailable(&e))?;
    let policies = node.plugins.ack_policies(user, device).await;
    let welcome = Frame::Welcome {
        version: PROTOCOL_VERSION,
        user: user.to_owned(),
        ack: policies.0,
        catch_up_ack: policies.1,
        max_frame_len: MAX_FRAME_LEN as u32,
    };
    connection
        .write_control(welcome.encode())
        .await
        .map_err(|_| gone())?;
    Ok(Welcomed { resume, policies })
}

fn gone() -> Refusal {
    Refusal::new(ErrorCode::INTERNAL, "connection lost")
}

/// Reads request frames and answers them in order; forwards ACKs to the pusher. The
/// requests that arrived together are answered together (`Requests::handle_all`: a
/// pipelined run of sends is stored as one batch) and their responses written at once.
async fn control_loop(
    shared: &Shared,
    user: &str,
    (conn_id, conn): (ConnId, ConnKey),
    link: &Link,
    mut decoder: FrameDecoder,
) -> Result<(), Refusal> {
    let mut out = Vec::new();
    loop {
        let mut requests = Vec::new();
        while let Some(frame) = decoder.next_frame().transpose() {
            match frame {
                Ok(Frame::Ack { ranges }) => {
                    shared.metrics.ack_frames.inc();
                    shared.pushes.control(conn, Control::Ack(ranges));
                }
                Ok(Frame::Hello { .. }) => requests.push(Err(Frame::Error {
                    id: 0,
                    code: ErrorCode::PROTOCOL_VIOLATION,
                    message: "already authenticated".into(),
                })),
                Ok(request) => requests.push(Ok(request)),
                Err(error) => requests.push(Err(classify(error)?)),
            }
        }
        // Runs of requests go to the handler together; ready answers keep their place.
        let mut pending = Vec::new();
        for item in requests {
            match item {
                Ok(Frame::Focus { id, groups }) => {
                    answer_all(shared, user, std::mem::take(&mut pending), &mut out).await;
                    let focus = shared.node.requests.focus(user, id, groups, |foreground| {
                        // A deployment that pushes in full accepts it and changes nothing.
                        if shared.config.delivery.background == Background::Compact {
                            shared.node.focus(conn_id, foreground);
                        }
                    });
                    out.extend_from_slice(&focus.encode());
                }
                Ok(request) => pending.push(request),
                Err(answer) => {
                    answer_all(shared, user, std::mem::take(&mut pending), &mut out).await;
                    out.extend_from_slice(&answer.encode());
                }
            }
        }
        answer_all(shared, user, pending, &mut out).await;
        if !out.is_empty()
            && link
                .write_control(std::mem::take(&mut out).into())
                .await
                .is_err()
        {
            return Ok(());
        }
        match link.read_control().await {
            Some(bytes) => decoder.extend(&bytes),
            // The client finished or reset its stream, or the connection closed: a normal end.
            None => return Ok(()),
        }
        // A chunk is one packet's worth: take whatever else has arrived too, so that a
        // pipelining client's requests are answered (and its sends stored) together.
        while decoder.buffered() < MAX_FRAME_LEN {
            match link.try_read_control() {
                Some(bytes) => decoder.extend(&bytes),
                None => break,
            }
        }
    }
}

async fn answer_all(shared: &Shared, user: &str, requests: Vec<Frame>, out: &mut Vec<u8>) {
    if requests.is_empty() {
        return;
    }
    let responses = Box::pin(shared.node.requests.handle_all(user, requests)).await;
    for response in responses {
        out.extend_from_slice(&response.encode());
    }
}
