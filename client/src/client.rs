//! The [`Client`]: connection set-up, the handshake, and one method per request.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::{
    AckPolicy, Conversation, Frame, FrameDecoder, HistoryPage, MemberInfo, Message,
    PROTOCOL_VERSION,
};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt, WriteError};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::acks::AckBatcher;
use crate::session::{self, FINISH_TIMEOUT, Shared, WriteCmd};
use crate::{ClientError, ConnectOptions, Sent};

/// QUIC handshake plus Hello/Welcome; keep-alives would otherwise let a mute gateway hang us.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Members asked per `ListMembers` page.
const MEMBERS_PAGE: u16 = 1000;
/// Pushes read ahead of the application; beyond this, QUIC flow control slows the gateway.
const INBOX_CAPACITY: usize = 1024;
const WRITE_QUEUE: usize = 256;

/// A connection to the gateway. Requests take `&self` and may run concurrently;
/// clones share the connection, which is closed (without flushing acks) when the
/// last clone is dropped — call [`Client::close`] to flush them.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Connection,
    endpoint: Endpoint,
    user: String,
    ack: AckPolicy,
    catch_up_ack: AckPolicy,
    shared: Arc<Shared>,
    writer: mpsc::Sender<WriteCmd>,
    inbox: Mutex<mpsc::Receiver<Message>>,
    next_id: AtomicU32,
    closing: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.conn.close(VarInt::from_u32(0), b"client dropped");
    }
}

/// What the handshake yields besides the streams.
struct Welcome {
    user: String,
    ack: AckPolicy,
    catch_up_ack: AckPolicy,
    max_frame_len: u32,
}

impl Client {
    /// Connects, authenticates with the token, and returns once the gateway said `Welcome`.
    pub async fn connect(opts: ConnectOptions) -> Result<Client, ClientError> {
        let config = crate::tls::quic_client_config(&opts.ca_pem)?;
        let bind: SocketAddr = match opts.server {
            SocketAddr::V4(a) if a.ip().is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let endpoint = Endpoint::client(bind)
            .map_err(|e| ClientError::Connect(format!("binding UDP socket {bind}: {e}")))?;
        let connecting = endpoint
            .connect_with(config, opts.server, &opts.server_name)
            .map_err(|e| ClientError::Connect(e.to_string()))?;

        let setup = async {
            let conn = connecting
                .await
                .map_err(|e| ClientError::from_handshake(&e))?;
            match handshake(&conn, &opts).await {
                Ok((send, recv, decoder, welcome)) => Ok((conn, send, recv, decoder, welcome)),
                Err(e) => {
                    conn.close(VarInt::from_u32(0), b"handshake failed");
                    Err(e)
                }
            }
        };
        let (conn, send, recv, decoder, welcome) =
            match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(ClientError::Connect(format!(
                        "no answer from {} within {CONNECT_TIMEOUT:?}",
                        opts.server
                    )));
                }
            };

        let max_frame_len = match welcome.max_frame_len as usize {
            0 => chat_protocol::MAX_FRAME_LEN,
            n => n.min(chat_protocol::MAX_FRAME_LEN),
        };
        let shared = Arc::new(Shared::new(
            AckBatcher::new(welcome.ack, welcome.catch_up_ack),
            max_frame_len,
        ));
        let (writer, write_queue) = mpsc::channel(WRITE_QUEUE);
        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        tokio::spawn(session::writer(shared.clone(), send, write_queue));
        tokio::spawn(session::control_reader(
            shared.clone(),
            conn.clone(),
            recv,
            decoder,
        ));
        tokio::spawn(session::push_reader(shared.clone(), conn.clone(), inbox_tx));
        tokio::spawn(session::ack_flusher(
            shared.clone(),
            writer.clone(),
            conn.clone(),
        ));
        Ok(Client {
            inner: Arc::new(Inner {
                conn,
                endpoint,
                user: welcome.user,
                ack: welcome.ack,
                catch_up_ack: welcome.catch_up_ack,
                shared,
                writer,
                inbox: Mutex::new(inbox),
                next_id: AtomicU32::new(1),
                closing: AtomicBool::new(false),
            }),
        })
    }

    /// The user id the gateway authenticated from the token.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// The gateway's ACK policy for live pushes.
    pub fn ack_policy(&self) -> AckPolicy {
        self.inner.ack
    }

    /// The gateway's ACK policy for catch-up pushes (flagged [`Message::FLAG_CATCH_UP`]).
    pub fn catch_up_ack_policy(&self) -> AckPolicy {
        self.inner.catch_up_ack
    }

    pub async fn create_group(&self, group: &str, members: &[String]) -> Result<(), ClientError> {
        let response = self
            .request(|id| Frame::CreateGroup {
                id,
                group: group.into(),
                members: members.to_vec(),
            })
            .await?;
        expect_done(response)
    }

    pub async fn add_members(&self, group: &str, users: &[String]) -> Result<(), ClientError> {
        let response = self
            .request(|id| Frame::AddMembers {
                id,
                group: group.into(),
                users: users.to_vec(),
            })
            .await?;
        expect_done(response)
    }

    pub async fn remove_members(&self, group: &str, users: &[String]) -> Result<(), ClientError> {
        let response = self
            .request(|id| Frame::RemoveMembers {
                id,
                group: group.into(),
                users: users.to_vec(),
            })
            .await?;
        expect_done(response)
    }

    pub async fn leave_group(&self, group: &str) -> Result<(), ClientError> {
        let response = self
            .request(|id| Frame::LeaveGroup {
                id,
                group: group.into(),
            })
            .await?;
        expect_done(response)
    }

    /// Every member of `group`, fetched page by page.
    pub async fn members(&self, group: &str) -> Result<Vec<MemberInfo>, ClientError> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let response = self
                .request(|id| Frame::ListMembers {
                    id,
                    group: group.into(),
                    after: after.clone(),
                    limit: MEMBERS_PAGE,
                })
                .await?;
            let Frame::Members { members, .. } = response else {
                return Err(unexpected(&response));
            };
            let short = members.len() < usize::from(MEMBERS_PAGE);
            if let Some(last) = members.last() {
                after = last.user.clone();
            }
            all.extend(members);
            if short {
                return Ok(all);
            }
        }
    }

    /// Sends to the whole group with a fresh random message id (use
    /// [`send_with_id`](Self::send_with_id) to retry idempotently).
    pub async fn send(&self, group: &str, body: impl Into<Bytes>) -> Result<Sent, ClientError> {
        self.send_message(group, &fresh_msg_id(), &[], body.into())
            .await
    }

    /// Sends to the whole group with a caller-chosen id: resending the same id returns the
    /// original `Sent` with `duplicate`.
    pub async fn send_with_id(
        &self,
        group: &str,
        msg_id: &str,
        body: impl Into<Bytes>,
    ) -> Result<Sent, ClientError> {
        self.send_message(group, msg_id, &[], body.into()).await
    }

    /// Sends a private message, visible to the members in `to` (and the sender) only, with a
    /// fresh random message id. Other members get a hidden placeholder carrying its seq.
    /// An empty `to` means the whole group, as for [`send`](Self::send).
    pub async fn send_private(
        &self,
        group: &str,
        to: &[String],
        body: impl Into<Bytes>,
    ) -> Result<Sent, ClientError> {
        self.send_message(group, &fresh_msg_id(), to, body.into())
            .await
    }

    /// [`send_private`](Self::send_private) with a caller-chosen id, to retry idempotently.
    pub async fn send_private_with_id(
        &self,
        group: &str,
        msg_id: &str,
        to: &[String],
        body: impl Into<Bytes>,
    ) -> Result<Sent, ClientError> {
        self.send_message(group, msg_id, to, body.into()).await
    }

    /// Runs a command owned by a gateway plugin (e.g. `delete` with the seq as argument)
    /// and returns its answer text. Plugins refuse with `rejected`; a name no plugin
    /// owns fails with `unknown_command`.
    pub async fn command(
        &self,
        group: &str,
        name: &str,
        args: &[String],
    ) -> Result<String, ClientError> {
        let response = self
            .request(|id| Frame::Command {
                id,
                group: group.into(),
                name: name.into(),
                args: args.to_vec(),
            })
            .await?;
        expect_command_result(response)
    }

    /// Deletes message `seq` of `group` for this user only (the `delete` plugin command):
    /// history and later deliveries show it as a hidden placeholder.
    pub async fn delete_for_me(&self, group: &str, seq: u64) -> Result<String, ClientError> {
        self.command(group, "delete", &[seq.to_string()]).await
    }

    /// One page of `group`'s history, in ascending seq order.
    pub async fn history(
        &self,
        group: &str,
        page: HistoryPage,
        limit: u16,
    ) -> Result<Vec<Message>, ClientError> {
        let response = self
            .request(|id| Frame::History {
                id,
                group: group.into(),
                page,
                limit,
            })
            .await?;
        match response {
            Frame::Messages { messages, .. } => Ok(messages),
            other => Err(unexpected(&other)),
        }
    }

    /// The user's groups, most recently active first (as the gateway orders them).
    pub async fn conversations(&self, limit: u16) -> Result<Vec<Conversation>, ClientError> {
        let response = self
            .request(|id| Frame::ListConversations { id, limit })
            .await?;
        match response {
            Frame::Conversations { conversations, .. } => Ok(conversations),
            other => Err(unexpected(&other)),
        }
    }

    /// The next push not seen before; taking it schedules its ack. Hidden placeholders
    /// ([`Message::is_hidden`]) are returned like any other push.
    /// `None` once the connection is closed and every received push was taken.
    pub async fn next_message(&self) -> Option<Message> {
        let mut inbox = self.inner.inbox.lock().await;
        loop {
            let message = inbox.recv().await?;
            if self.inner.shared.take_push(&message) {
                return Some(message);
            }
        }
    }

    /// [`next_message`](Self::next_message), giving up after `d`.
    pub async fn next_message_timeout(&self, d: Duration) -> Option<Message> {
        tokio::time::timeout(d, self.next_message())
            .await
            .ok()
            .flatten()
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<ClientError> {
        self.inner.shared.close_reason().or_else(|| {
            self.inner
                .conn
                .close_reason()
                .map(|e| ClientError::from_connection(&e))
        })
    }

    /// Sends pending acks, waits (briefly) until the gateway has them, then closes with code 0.
    pub async fn close(&self) {
        let inner = &self.inner;
        if inner.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        // First, so that our own close is the reason, not the gateway's reaction to it.
        inner.shared.fail_all(ClientError::Closed);
        session::flush_acks(&inner.shared, &inner.writer).await;
        let (done, finished) = oneshot::channel();
        if inner.writer.send(WriteCmd::Finish(done)).await.is_ok() {
            let _ = tokio::time::timeout(FINISH_TIMEOUT, finished).await;
            // The gateway closes once it has applied everything sent before the finish.
            let _ = tokio::time::timeout(FINISH_TIMEOUT, inner.conn.closed()).await;
        }
        inner.conn.close(VarInt::from_u32(0), b"bye");
        // Lets the endpoint actually send the CONNECTION_CLOSE before a CLI exits.
        let _ = tokio::time::timeout(Duration::from_secs(1), inner.endpoint.wait_idle()).await;
    }

    /// Raw access, for tests that need to misbehave.
    pub fn connection(&self) -> &quinn::Connection {
        &self.inner.conn
    }

    /// What every public send function does: one `Send` request, `to` empty for the whole group.
    async fn send_message(
        &self,
        group: &str,
        msg_id: &str,
        to: &[String],
        body: Bytes,
    ) -> Result<Sent, ClientError> {
        let response = self
            .request(|id| Frame::Send {
                id,
                group: group.into(),
                msg_id: msg_id.into(),
                body,
                to: to.to_vec(),
            })
            .await?;
        expect_sent(response)
    }

    fn next_id(&self) -> u32 {
        loop {
            // 0 is reserved for connection-level errors; skip it on wrap-around.
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Sends a request and waits for the response carrying its id; `Error` becomes `Server`.
    async fn request(&self, make: impl FnOnce(u32) -> Frame) -> Result<Frame, ClientError> {
        let id = self.next_id();
        let (reply, response) = oneshot::channel();
        self.inner.shared.register(id, reply)?;
        // Forget the waiter if this future is dropped before the response arrives.
        let _guard = Unregister {
            shared: &self.inner.shared,
            id,
        };
        let bytes = make(id).encode();
        if self
            .inner
            .writer
            .send(WriteCmd::Frame(bytes))
            .await
            .is_err()
        {
            return Err(self.gone());
        }
        match response.await {
            Ok(Ok(Frame::Error { code, message, .. })) => {
                Err(ClientError::Server { code, message })
            }
            Ok(result) => result,
            Err(_) => Err(self.gone()),
        }
    }

    fn gone(&self) -> ClientError {
        self.close_reason().unwrap_or(ClientError::Closed)
    }
}

struct Unregister<'a> {
    shared: &'a Shared,
    id: u32,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}

/// A random 128-bit message id, in hex.
fn fresh_msg_id() -> String {
    rand::random::<[u8; 16]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn expect_sent(response: Frame) -> Result<Sent, ClientError> {
    match response {
        Frame::Sent {
            group,
            seq,
            ts_ms,
            duplicate,
            ..
        } => Ok(Sent {
            group,
            seq,
            ts_ms,
            duplicate,
        }),
        other => Err(unexpected(&other)),
    }
}

fn expect_command_result(response: Frame) -> Result<String, ClientError> {
    match response {
        Frame::CommandResult { text, .. } => Ok(text),
        other => Err(unexpected(&other)),
    }
}

fn expect_done(response: Frame) -> Result<(), ClientError> {
    match response {
        Frame::Done { .. } => Ok(()),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(frame: &Frame) -> ClientError {
    ClientError::Protocol(format!("unexpected {} response", frame.frame_type().name()))
}

/// Opens the control stream, says `Hello`, and reads up to `Welcome`.
async fn handshake(
    conn: &Connection,
    opts: &ConnectOptions,
) -> Result<(SendStream, RecvStream, FrameDecoder, Welcome), ClientError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::from_handshake(&e))?;
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        token: opts.token.clone(),
        device: opts.device.clone(),
    };
    if let Err(e) = send.write_all(&hello.encode()).await {
        return Err(match e {
            WriteError::ConnectionLost(c) => ClientError::from_handshake(&c),
            other => {
                refused_or(
                    conn,
                    ClientError::Connect(format!("sending Hello: {other}")),
                )
                .await
            }
        });
    }
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match decoder.next_frame() {
            Ok(Some(Frame::Welcome {
                version,
                user,
                ack,
                catch_up_ack,
                max_frame_len,
            })) => {
                if version != PROTOCOL_VERSION {
                    return Err(ClientError::Protocol(format!(
                        "gateway speaks protocol version {version}, this client {PROTOCOL_VERSION}"
                    )));
                }
                let welcome = Welcome {
                    user,
                    ack,
                    catch_up_ack,
                    max_frame_len,
                };
                return Ok((send, recv, decoder, welcome));
            }
            Ok(Some(Frame::Error { code, message, .. })) => {
                // The gateway usually follows with a close carrying the same code; prefer it.
                let fallback = ClientError::Refused {
                    code,
                    reason: message,
                };
                return Err(refused_or(conn, fallback).await);
            }
            Ok(Some(other)) => {
                return Err(ClientError::Protocol(format!(
                    "expected Welcome, got {}",
                    other.frame_type().name()
                )));
            }
            Err(chat_protocol::DecodeError::UnknownType(_)) => {}
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
            Ok(None) => match recv.read(&mut buf).await {
                Ok(Some(n)) => decoder.extend(&buf[..n]),
                Ok(None) => {
                    let fallback =
                        ClientError::Protocol("control stream ended before Welcome".into());
                    return Err(refused_or(conn, fallback).await);
                }
                Err(quinn::ReadError::ConnectionLost(c)) => {
                    return Err(ClientError::from_handshake(&c));
                }
                Err(other) => {
                    let fallback = ClientError::Protocol(format!("reading Welcome: {other}"));
                    return Err(refused_or(conn, fallback).await);
                }
            },
        }
    }
}

/// The gateway's application close if it arrives shortly, else `fallback`.
async fn refused_or(conn: &Connection, fallback: ClientError) -> ClientError {
    match tokio::time::timeout(Duration::from_secs(1), conn.closed()).await {
        Ok(e @ quinn::ConnectionError::ApplicationClosed(_)) => ClientError::from_connection(&e),
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_responses_become_sent() {
        let sent = expect_sent(Frame::Sent {
            id: 4,
            group: "g".into(),
            seq: 9,
            ts_ms: 1_700_000_000_000,
            duplicate: true,
        })
        .unwrap();
        assert_eq!(
            sent,
            Sent {
                group: "g".into(),
                seq: 9,
                ts_ms: 1_700_000_000_000,
                duplicate: true,
            }
        );
        assert!(matches!(
            expect_sent(Frame::Done { id: 4 }),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn command_results_become_their_text() {
        let text = expect_command_result(Frame::CommandResult {
            id: 2,
            text: "deleted 7 for you".into(),
        })
        .unwrap();
        assert_eq!(text, "deleted 7 for you");
        assert!(matches!(
            expect_command_result(Frame::Sent {
                id: 2,
                group: "g".into(),
                seq: 1,
                ts_ms: 0,
                duplicate: false,
            }),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn fresh_msg_ids_are_128_bit_hex() {
        let a = fresh_msg_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, fresh_msg_id());
    }
}
