//! State shared between a [`Client`](crate::Client) and its background tasks, and the tasks:
//! the control-stream reader (dispatching responses by id), the control-stream writer
//! (requests and acks, so a cancelled caller never leaves half a frame behind), the
//! push-stream reader and the ack flusher.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_protocol::{
    DecodeError, ErrorCode, Frame, FrameDecoder, GroupActivity, Message, UnreadCount,
};
use quinn::{Connection, ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::acks::{AckBatcher, AckClass, ack_frames};
use crate::dedup::Dedup;
use crate::{ClientError, Skipped};

/// How long to wait for the gateway's close after it ended a stream, to learn why.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long `close()` waits for the gateway to receive the last bytes (acks).
pub(crate) const FINISH_TIMEOUT: Duration = Duration::from_secs(3);
const READ_BUF: usize = 64 * 1024;

pub(crate) type Reply = oneshot::Sender<Result<Frame, ClientError>>;

/// What the writer task is asked to do with the control stream.
pub(crate) enum WriteCmd {
    Frame(Bytes),
    /// Finish the stream, wait until the gateway has received everything, then report.
    Finish(oneshot::Sender<()>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Pending {
    waiters: HashMap<u32, Reply>,
    /// Set once, when the connection ends: later requests fail with it at once.
    closed: Option<ClientError>,
    /// The last connection-level `Error` (id 0), reported if the connection then dies.
    connection_error: Option<(ErrorCode, String)>,
}

pub(crate) struct Shared {
    pending: Mutex<Pending>,
    /// Shared with the connections before and after this one.
    dedup: Arc<Mutex<Dedup>>,
    acks: Mutex<AckBatcher>,
    ack_wake: Notify,
    max_frame_len: usize,
    /// The gateway sent `GoAway`: its deadline, and a wake-up for the mover.
    go_away_ms: std::sync::atomic::AtomicU32,
    go_away: Notify,
}

impl Shared {
    pub(crate) fn new(acks: AckBatcher, dedup: Arc<Mutex<Dedup>>, max_frame_len: usize) -> Self {
        Self {
            pending: Mutex::default(),
            dedup,
            acks: Mutex::new(acks),
            ack_wake: Notify::new(),
            max_frame_len,
            go_away_ms: std::sync::atomic::AtomicU32::new(0),
            go_away: Notify::new(),
        }
    }

    /// The gateway asked this connection to move within `deadline_ms`.
    fn go_away(&self, deadline_ms: u32) {
        self.go_away_ms
            .store(deadline_ms, std::sync::atomic::Ordering::SeqCst);
        self.go_away.notify_one();
    }

    /// Registers a waiter for the response to request `id`, unless the connection is gone.
    pub(crate) fn register(&self, id: u32, reply: Reply) -> Result<(), ClientError> {
        let mut pending = lock(&self.pending);
        if let Some(reason) = &pending.closed {
            return Err(reason.clone());
        }
        pending.waiters.insert(id, reply);
        Ok(())
    }

    pub(crate) fn unregister(&self, id: u32) {
        lock(&self.pending).waiters.remove(&id);
    }

    /// Why the connection ended, if it has.
    pub(crate) fn close_reason(&self) -> Option<ClientError> {
        lock(&self.pending).closed.clone()
    }

    /// Records why the connection ended (the first reason wins) and fails every waiter with it.
    pub(crate) fn fail_all(&self, reason: ClientError) {
        let mut pending = lock(&self.pending);
        if pending.closed.is_none() {
            let reason = match (reason, pending.connection_error.take()) {
                (ClientError::Closed, Some((code, reason))) => {
                    ClientError::Refused { code, reason }
                }
                (reason, _) => reason,
            };
            pending.closed = Some(reason);
        }
        let reason = pending.closed.clone().unwrap_or(ClientError::Closed);
        for (_, waiter) in pending.waiters.drain() {
            let _ = waiter.send(Err(reason.clone()));
        }
    }

    fn dispatch(&self, id: u32, frame: Frame) {
        if id == 0 {
            if let Frame::Error { code, message, .. } = frame {
                tracing::warn!(%code, %message, "connection-level error from gateway");
                lock(&self.pending).connection_error = Some((code, message));
            }
            return;
        }
        match lock(&self.pending).waiters.remove(&id) {
            Some(waiter) => {
                let _ = waiter.send(Ok(frame));
            }
            None => tracing::debug!(id, "response to a request nobody waits for"),
        }
    }

    /// Whether this push was already surfaced; if so it is acknowledged again.
    fn drop_duplicate(&self, message: &Message) -> bool {
        let duplicate = lock(&self.dedup).is_duplicate(&message.group, message.seq);
        if duplicate {
            self.record_ack(message);
        }
        duplicate
    }

    /// The application takes a push (hidden placeholders included): acknowledge it and
    /// say whether it is new to the app.
    pub(crate) fn take_push(&self, message: &Message) -> bool {
        let fresh = lock(&self.dedup).surface(&message.group, message.seq);
        self.record_ack(message);
        fresh
    }

    /// Schedules the push's ACK under the policy its `FLAG_CATCH_UP` bit selects.
    fn record_ack(&self, message: &Message) {
        lock(&self.acks).record(
            &message.group,
            message.seq,
            AckClass::of(message),
            Instant::now(),
        );
        self.ack_wake.notify_one();
    }

    /// Takes the pending acks as frames if they are due (or all of them when `force`).
    fn due_acks(&self, force: bool) -> (Vec<Frame>, Option<Instant>) {
        let mut acks = lock(&self.acks);
        if acks.is_empty() || !(force || acks.is_due(Instant::now())) {
            return (Vec::new(), acks.deadline());
        }
        (ack_frames(acks.take(), self.max_frame_len), None)
    }
}

/// Sends every pending ack now, whatever the policy says (used when closing).
pub(crate) async fn flush_acks(shared: &Shared, writer: &mpsc::Sender<WriteCmd>) {
    let (frames, _) = shared.due_acks(true);
    for frame in frames {
        if writer.send(WriteCmd::Frame(frame.encode())).await.is_err() {
            return;
        }
    }
}

/// Sends acks when the batch is full or a pending push waited its policy's `max_delay_ms`.
/// Longest a client waits, after `GoAway`, before leaving: a random share of it, so the
/// clients of a draining gateway do not all reconnect at the same instant.
const MOVE_SPREAD_MAX: Duration = Duration::from_secs(2);

/// On `GoAway`, leaves the connection gracefully (pending ACKs sent, the control stream
/// finished and applied by the gateway), so the client's reconnect loop moves it to
/// another gateway and it resumes from its cursors.
pub(crate) async fn mover(shared: Arc<Shared>, writer: mpsc::Sender<WriteCmd>, conn: Connection) {
    tokio::select! {
        _ = shared.go_away.notified() => {}
        _ = conn.closed() => return,
    }
    let deadline = Duration::from_millis(
        shared
            .go_away_ms
            .load(std::sync::atomic::Ordering::SeqCst)
            .into(),
    );
    let spread = (deadline / 4).min(MOVE_SPREAD_MAX);
    tokio::time::sleep(spread.mul_f64(rand::random::<f64>())).await;
    tracing::info!("the gateway is draining; moving");
    flush_acks(&shared, &writer).await;
    let (done, finished) = oneshot::channel();
    if writer.send(WriteCmd::Finish(done)).await.is_ok() {
        let _ = tokio::time::timeout(FINISH_TIMEOUT, finished).await;
        let _ = tokio::time::timeout(FINISH_TIMEOUT, conn.closed()).await;
    }
    conn.close(VarInt::from_u32(0), b"moving");
}

pub(crate) async fn ack_flusher(
    shared: std::sync::Arc<Shared>,
    writer: mpsc::Sender<WriteCmd>,
    conn: Connection,
) {
    loop {
        let (frames, deadline) = shared.due_acks(false);
        for frame in frames {
            if writer.send(WriteCmd::Frame(frame.encode())).await.is_err() {
                return;
            }
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.ack_wake.notified() => {}
            _ = sleep => {}
            _ = conn.closed() => return,
        }
    }
}

/// Owns the control stream's send half; every write goes through here.
pub(crate) async fn writer(
    shared: std::sync::Arc<Shared>,
    mut send: SendStream,
    mut commands: mpsc::Receiver<WriteCmd>,
) {
    while let Some(command) = commands.recv().await {
        match command {
            WriteCmd::Frame(bytes) => {
                if let Err(e) = send.write_all(&bytes).await {
                    let reason = match &e {
                        WriteError::ConnectionLost(c) => ClientError::from_connection(c),
                        other => {
                            tracing::debug!(error = %other, "control stream write failed");
                            ClientError::Closed
                        }
                    };
                    shared.fail_all(reason);
                    return;
                }
            }
            WriteCmd::Finish(done) => {
                if send.finish().is_ok() {
                    let _ = tokio::time::timeout(FINISH_TIMEOUT, send.stopped()).await;
                }
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Closes the connection because the gateway broke the protocol, and records why.
fn protocol_failure(shared: &Shared, conn: &Connection, code: ErrorCode, what: String) {
    tracing::warn!(%code, %what, "closing: gateway broke the protocol");
    shared.fail_all(ClientError::Protocol(what.clone()));
    conn.close(VarInt::from(code.0), what.as_bytes());
}

fn decode_failure_code(e: &DecodeError) -> ErrorCode {
    match e {
        DecodeError::TooLarge(_) => ErrorCode::FRAME_TOO_LARGE,
        DecodeError::UnknownType(_) => ErrorCode::UNKNOWN_FRAME,
        DecodeError::Empty | DecodeError::Malformed { .. } => ErrorCode::MALFORMED_FRAME,
    }
}

/// After a stream ended without a connection error, waits briefly for the gateway's
/// close to learn its code and reason.
async fn end_reason(conn: &Connection, fallback: ClientError) -> ClientError {
    match tokio::time::timeout(CLOSE_GRACE, conn.closed()).await {
        Ok(e) => ClientError::from_connection(&e),
        Err(_) => fallback,
    }
}

/// Turns a stream read failure into the reason the session ended.
async fn read_failure(conn: &Connection, e: ReadError) -> ClientError {
    match e {
        ReadError::ConnectionLost(c) => ClientError::from_connection(&c),
        other => {
            end_reason(
                conn,
                ClientError::Protocol(format!("stream failed: {other}")),
            )
            .await
        }
    }
}

/// Reads the control stream to its end, handing each response to its waiter.
pub(crate) async fn control_reader(
    shared: std::sync::Arc<Shared>,
    conn: Connection,
    mut recv: RecvStream,
    mut decoder: FrameDecoder,
) {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => match frame.request_id() {
                Some(id) if is_response(&frame) => shared.dispatch(id, frame),
                _ => {
                    let what = format!(
                        "unexpected {} frame on the control stream",
                        frame.frame_type().name()
                    );
                    return protocol_failure(&shared, &conn, ErrorCode::PROTOCOL_VIOLATION, what);
                }
            },
            Err(DecodeError::UnknownType(t)) => {
                tracing::debug!(frame_type = t, "skipping unknown frame type");
            }
            Err(e) => {
                return protocol_failure(&shared, &conn, decode_failure_code(&e), e.to_string());
            }
            Ok(None) => match recv.read(&mut buf).await {
                Ok(Some(n)) => decoder.extend(&buf[..n]),
                Ok(None) => {
                    let reason = end_reason(&conn, ClientError::Closed).await;
                    shared.fail_all(reason);
                    conn.close(VarInt::from_u32(0), b"control stream ended");
                    return;
                }
                Err(e) => {
                    let reason = read_failure(&conn, e).await;
                    shared.fail_all(reason);
                    conn.close(VarInt::from_u32(0), b"control stream failed");
                    return;
                }
            },
        }
    }
}

fn is_response(frame: &Frame) -> bool {
    matches!(
        frame,
        Frame::Done { .. }
            | Frame::Members { .. }
            | Frame::Sent { .. }
            | Frame::Messages { .. }
            | Frame::Conversations { .. }
            | Frame::CommandResult { .. }
            | Frame::Unread { .. }
            | Frame::Error { .. }
    )
}

/// Where every connection's push stream delivers, so the application's queues outlive
/// a reconnect.
#[derive(Clone)]
pub(crate) struct PushSinks {
    pub inbox: mpsc::Sender<Message>,
    pub unread: mpsc::UnboundedSender<Vec<UnreadCount>>,
    pub skipped: mpsc::UnboundedSender<Skipped>,
    pub activity: mpsc::UnboundedSender<Vec<GroupActivity>>,
}

/// Accepts the gateway's push stream and queues its new pushes for the application.
/// Ends (closing the queue) when the stream or the connection does.
pub(crate) async fn push_reader(
    shared: std::sync::Arc<Shared>,
    conn: Connection,
    sinks: PushSinks,
) {
    let PushSinks {
        inbox,
        unread,
        skipped,
        activity,
    } = sinks;
    let mut recv = match conn.accept_uni().await {
        Ok(recv) => recv,
        Err(e) => {
            tracing::debug!(error = %e, "no push stream");
            return;
        }
    };
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        match decoder.next_frame() {
            Ok(Some(Frame::Push { message })) => {
                if shared.drop_duplicate(&message) {
                    continue;
                }
                if inbox.send(message).await.is_err() {
                    return; // The client is gone.
                }
            }
            Ok(Some(Frame::UnreadChanged { groups })) => {
                let _ = unread.send(groups);
            }
            Ok(Some(Frame::Skipped { group, first, last })) => {
                let _ = skipped.send(Skipped { group, first, last });
            }
            Ok(Some(Frame::Activity { groups })) => {
                let _ = activity.send(groups);
            }
            Ok(Some(Frame::GoAway { deadline_ms, .. })) => shared.go_away(deadline_ms),
            Ok(Some(other)) => {
                let what = format!(
                    "unexpected {} frame on the push stream",
                    other.frame_type().name()
                );
                return protocol_failure(&shared, &conn, ErrorCode::PROTOCOL_VIOLATION, what);
            }
            Err(DecodeError::UnknownType(t)) => {
                tracing::debug!(frame_type = t, "skipping unknown frame type");
            }
            Err(e) => {
                return protocol_failure(&shared, &conn, decode_failure_code(&e), e.to_string());
            }
            Ok(None) => match recv.read(&mut buf).await {
                Ok(Some(n)) => decoder.extend(&buf[..n]),
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "push stream ended");
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use chat_protocol::{AckPolicy, AckRange};

    use super::*;

    fn policy(max_batch: u16) -> AckPolicy {
        AckPolicy {
            max_delay_ms: 60_000,
            max_batch,
            retransmit_ms: 120_000,
        }
    }

    fn push(seq: u64, flags: u8) -> Message {
        let hidden = flags & Message::FLAG_HIDDEN != 0;
        Message {
            group: "g".into(),
            seq,
            sender: if hidden { "" } else { "bob" }.into(),
            ts_ms: 1_700_000_000_000,
            flags,
            body: if hidden { "" } else { "hi" }.into(),
        }
    }

    fn acked(frames: Vec<Frame>) -> Vec<AckRange> {
        frames
            .into_iter()
            .flat_map(|f| match f {
                Frame::Ack { ranges } => ranges,
                other => panic!("not an ack: {other:?}"),
            })
            .collect()
    }

    fn range(first: u64, last: u64) -> AckRange {
        AckRange {
            group: "g".into(),
            first,
            last,
        }
    }

    #[test]
    fn command_results_are_responses() {
        assert!(is_response(&Frame::CommandResult {
            id: 1,
            text: "deleted 7 for you".into(),
        }));
        assert!(!is_response(&Frame::Command {
            id: 1,
            group: "g".into(),
            name: "delete".into(),
            args: vec!["7".into()],
        }));
        assert!(!is_response(&Frame::Push {
            message: push(1, 0)
        }));
    }

    #[test]
    fn taken_pushes_are_acked_under_their_flag_policy() {
        let shared = Shared::new(
            AckBatcher::new(policy(1), policy(3), Instant::now(), 0.0),
            Arc::default(),
            1 << 16,
        );
        assert!(shared.take_push(&push(1, Message::FLAG_CATCH_UP)));
        assert!(shared.take_push(&push(2, Message::FLAG_CATCH_UP)));
        // Two catch-up pushes: below the catch-up batch of 3.
        assert!(shared.due_acks(false).0.is_empty());
        // A live one: the live batch of 1 is full, everything goes.
        assert!(shared.take_push(&push(3, 0)));
        assert_eq!(acked(shared.due_acks(false).0), vec![range(1, 3)]);
        assert!(shared.due_acks(true).0.is_empty());
    }

    #[test]
    fn hidden_placeholders_surface_once_and_are_acked() {
        let shared = Shared::new(
            AckBatcher::new(policy(100), policy(100), Instant::now(), 0.0),
            Arc::default(),
            1 << 16,
        );
        let placeholder = push(4, Message::FLAG_HIDDEN | Message::FLAG_CATCH_UP);
        assert!(!shared.drop_duplicate(&placeholder));
        assert!(shared.take_push(&placeholder));
        // A retransmission is dropped before the app, but acknowledged again.
        assert!(shared.drop_duplicate(&placeholder));
        assert!(!shared.take_push(&placeholder));
        assert!(shared.take_push(&push(5, Message::FLAG_PRIVATE)));
        assert_eq!(acked(shared.due_acks(true).0), vec![range(4, 5)]);
    }
}
