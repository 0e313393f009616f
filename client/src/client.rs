//! The [`Client`]: connection set-up, the handshake, and one method per request.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::{
    AckPolicy, Conversation, ErrorCode, Frame, FrameDecoder, GroupActivity, HistoryPage,
    MemberInfo, Message, PROTOCOL_VERSION, UnreadCount,
};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt, WriteError};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use crate::acks::AckBatcher;
use crate::dedup::Dedup;
use crate::session::{self, FINISH_TIMEOUT, PushSinks, Shared, WriteCmd};
use crate::{ClientError, ConnectOptions, Sent, Skipped, UnreadCounts};

/// QUIC handshake plus Hello/Welcome; keep-alives would otherwise let a mute gateway hang us.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Members asked per `ListMembers` page.
const MEMBERS_PAGE: u16 = 1000;
/// Pushes read ahead of the application; beyond this, QUIC flow control slows the gateway.
const INBOX_CAPACITY: usize = 1024;
const WRITE_QUEUE: usize = 256;
/// First and longest pause between reconnect attempts (jittered).
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// First and longest pause before a send refused as `unavailable` is tried again.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A connection to the gateway. Requests take `&self` and may run concurrently;
/// clones share the connection, which is closed (without flushing acks) when the
/// last clone is dropped — call [`Client::close`] to flush them.
///
/// With [`ConnectOptions::reconnect`], a lost connection is replaced in the background
/// (jittered backoff, `server` then each of `failover` in turn): the gateway catches the
/// device up from its acknowledged cursor, and pushes already surfaced are not surfaced
/// again. Sends retry a transient failure with the same message id until
/// [`ConnectOptions::send_retry`] runs out, so a retried send is stored once.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    opts: ConnectOptions,
    user: String,
    ack: AckPolicy,
    catch_up_ack: AckPolicy,
    /// The current connection; replaced when it is lost and `reconnect` is on.
    link: RwLock<Arc<Link>>,
    /// Bumped each time `link` is replaced.
    relinked: watch::Sender<u64>,
    /// What was surfaced to the application, across connections.
    dedup: Arc<StdMutex<Dedup>>,
    inbox: Mutex<mpsc::Receiver<Message>>,
    /// `UnreadChanged` pushes, across connections.
    unread_changes: Mutex<mpsc::UnboundedReceiver<Vec<UnreadCount>>>,
    /// `Skipped` notices, across connections.
    skipped: Mutex<mpsc::UnboundedReceiver<Skipped>>,
    /// `Activity` notices of background groups, across connections.
    activity: Mutex<mpsc::UnboundedReceiver<Vec<GroupActivity>>>,
    /// The groups the application shows, once it said (sent again after a reconnect).
    focus: StdMutex<Option<Vec<String>>>,
    next_id: AtomicU32,
    closing: AtomicBool,
}

/// One QUIC connection and the tasks serving it.
struct Link {
    conn: Connection,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    writer: mpsc::Sender<WriteCmd>,
}

impl Drop for Link {
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
    /// With `reconnect` on, each of `failover` is tried in turn if `server` cannot be reached.
    pub async fn connect(opts: ConnectOptions) -> Result<Client, ClientError> {
        let dedup = Arc::new(StdMutex::new(Dedup::default()));
        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let (unread_tx, unread_changes) = mpsc::unbounded_channel();
        let (skipped_tx, skipped) = mpsc::unbounded_channel();
        let (activity_tx, activity) = mpsc::unbounded_channel();
        let pushes = PushSinks {
            inbox: inbox_tx,
            unread: unread_tx,
            skipped: skipped_tx,
            activity: activity_tx,
        };
        let servers = if opts.reconnect {
            opts.servers()
        } else {
            vec![opts.server]
        };
        let mut failure = None;
        let mut connected = None;
        for server in servers {
            match open_link(&opts, server, dedup.clone(), pushes.clone()).await {
                Ok(link) => {
                    connected = Some(link);
                    break;
                }
                Err(e) if e.is_transient() => failure = Some(e),
                Err(e) => return Err(e),
            }
        }
        let Some((link, welcome)) = connected else {
            return Err(failure.unwrap_or(ClientError::Closed));
        };
        let inner = Arc::new(Inner {
            user: welcome.user,
            ack: welcome.ack,
            catch_up_ack: welcome.catch_up_ack,
            link: RwLock::new(Arc::new(link)),
            relinked: watch::Sender::new(0),
            dedup,
            inbox: Mutex::new(inbox),
            unread_changes: Mutex::new(unread_changes),
            skipped: Mutex::new(skipped),
            activity: Mutex::new(activity),
            focus: StdMutex::new(None),
            next_id: AtomicU32::new(1),
            closing: AtomicBool::new(false),
            opts,
        });
        if inner.opts.reconnect {
            tokio::spawn(reconnect_forever(Arc::downgrade(&inner), pushes));
        }
        Ok(Client { inner })
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

    /// This user's unread counts, per group and in total. Counts are written in merged
    /// batches (about once a second), so a message may take that long to show.
    pub async fn unread(&self) -> Result<UnreadCounts, ClientError> {
        match self.request(|id| Frame::GetUnread { id }).await? {
            Frame::Unread { total, groups, .. } => Ok(UnreadCounts { total, groups }),
            other => Err(unexpected(&other)),
        }
    }

    /// Marks `group` read up to `seq` (clamped to the latest message): its unread count
    /// drops to the messages after `seq`, on every device of this user.
    pub async fn mark_read(&self, group: &str, seq: u64) -> Result<(), ClientError> {
        let response = self
            .request(|id| Frame::MarkRead {
                id,
                group: group.into(),
                seq,
            })
            .await?;
        expect_done(response)
    }

    /// The next `UnreadChanged` push: new counts of some groups (each replaces the one
    /// before). The gateway sends them per count flush, not per message.
    pub async fn next_unread_change(&self, wait: Duration) -> Option<Vec<UnreadCount>> {
        next_within(&self.inner.unread_changes, wait).await
    }

    /// The next `Skipped` notice: on connect the device was too far behind in a group,
    /// and the gateway pushes only the newest messages; the skipped range is for the
    /// application to fetch with [`Client::history`] if (and when) it wants it.
    pub async fn next_skipped(&self, wait: Duration) -> Option<Skipped> {
        next_within(&self.inner.skipped, wait).await
    }

    /// Tells the gateway which groups the application shows now (replacing the last
    /// call's): the others are in the background, and where the gateway allows it they
    /// get [`Client::next_activity`] notices instead of pushes, until a later call brings
    /// them back (their messages then arrive from the log). Sent again after a reconnect.
    pub async fn focus(&self, groups: &[String]) -> Result<(), ClientError> {
        *self
            .inner
            .focus
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(groups.to_vec());
        self.send_focus(groups.to_vec()).await
    }

    async fn send_focus(&self, groups: Vec<String>) -> Result<(), ClientError> {
        let response = self.request(|id| Frame::Focus { id, groups }).await?;
        expect_done(response)
    }

    /// The next `Activity` notice: background groups (see [`Client::focus`]) that got
    /// messages, each with its latest seq and how many messages are not pushed yet.
    pub async fn next_activity(&self, wait: Duration) -> Option<Vec<GroupActivity>> {
        next_within(&self.inner.activity, wait).await
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
            if self.inner.link().shared.take_push(&message) {
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
        self.inner.link().close_reason()
    }

    /// Sends pending acks, waits (briefly) until the gateway has them, then closes with code 0.
    pub async fn close(&self) {
        let inner = &self.inner;
        if inner.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        let link = inner.link();
        // First, so that our own close is the reason, not the gateway's reaction to it.
        link.shared.fail_all(ClientError::Closed);
        session::flush_acks(&link.shared, &link.writer).await;
        let (done, finished) = oneshot::channel();
        if link.writer.send(WriteCmd::Finish(done)).await.is_ok() {
            let _ = tokio::time::timeout(FINISH_TIMEOUT, finished).await;
            // The gateway closes once it has applied everything sent before the finish.
            let _ = tokio::time::timeout(FINISH_TIMEOUT, link.conn.closed()).await;
        }
        link.conn.close(VarInt::from_u32(0), b"bye");
        // Lets the endpoint actually send the CONNECTION_CLOSE before a CLI exits.
        let _ = tokio::time::timeout(Duration::from_secs(1), link.endpoint.wait_idle()).await;
    }

    /// The current QUIC connection: raw access, for tests that need to misbehave.
    pub fn connection(&self) -> quinn::Connection {
        self.inner.link().conn.clone()
    }

    /// How many times the connection was replaced after a loss.
    pub fn reconnects(&self) -> u64 {
        *self.inner.relinked.borrow()
    }

    /// What every public send function does: one `Send` request, `to` empty for the whole group.
    /// Retries a transient failure with the same `msg_id` (so the message is stored once)
    /// until `send_retry` runs out.
    async fn send_message(
        &self,
        group: &str,
        msg_id: &str,
        to: &[String],
        body: Bytes,
    ) -> Result<Sent, ClientError> {
        let deadline = tokio::time::Instant::now() + self.inner.opts.send_retry;
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            let mut relinked = self.inner.relinked.subscribe();
            let result = self
                .request(|id| Frame::Send {
                    id,
                    group: group.into(),
                    msg_id: msg_id.into(),
                    body: body.clone(),
                    to: to.to_vec(),
                })
                .await
                .and_then(expect_sent);
            let error = match result {
                Err(e) if self.may_retry(&e) => e,
                other => return other,
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, msg_id, "send failed; retrying with the same id");
            if error.code().is_none() {
                // The connection is gone: wait for its replacement.
                let _ = tokio::time::timeout_at(deadline, relinked.changed()).await;
            } else {
                tokio::time::sleep(jittered(backoff).min(deadline - now)).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
        }
    }

    /// Whether a failed send may succeed if sent again: the store or gateway was briefly
    /// away, or the connection was lost and is being replaced.
    fn may_retry(&self, error: &ClientError) -> bool {
        match error {
            ClientError::Server { code, .. } => {
                *code == ErrorCode::UNAVAILABLE || *code == ErrorCode::SHUTTING_DOWN
            }
            _ => self.inner.opts.reconnect && error.is_transient(),
        }
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
        let link = self.inner.link();
        let id = self.next_id();
        let (reply, response) = oneshot::channel();
        link.shared.register(id, reply)?;
        // Forget the waiter if this future is dropped before the response arrives.
        let _guard = Unregister {
            shared: &link.shared,
            id,
        };
        let bytes = make(id).encode();
        let gone = || link.close_reason().unwrap_or(ClientError::Closed);
        if link.writer.send(WriteCmd::Frame(bytes)).await.is_err() {
            return Err(gone());
        }
        match response.await {
            Ok(Ok(Frame::Error { code, message, .. })) => {
                Err(ClientError::Server { code, message })
            }
            Ok(result) => result,
            Err(_) => Err(gone()),
        }
    }
}

impl Inner {
    fn link(&self) -> Arc<Link> {
        self.link
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Link {
    fn close_reason(&self) -> Option<ClientError> {
        self.shared.close_reason().or_else(|| {
            self.conn
                .close_reason()
                .map(|e| ClientError::from_connection(&e))
        })
    }
}

/// Connects to `server`: QUIC, `Hello`/`Welcome`, then the tasks serving the connection.
/// Pushes go to `inbox`, deduplicated against everything surfaced before.
async fn open_link(
    opts: &ConnectOptions,
    server: SocketAddr,
    dedup: Arc<StdMutex<Dedup>>,
    pushes: PushSinks,
) -> Result<(Link, Welcome), ClientError> {
    let config = crate::tls::client_config(&opts.ca_pem, opts.idle_timeout)?;
    let bind: SocketAddr = match server {
        SocketAddr::V4(a) if a.ip().is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let endpoint = Endpoint::client(bind)
        .map_err(|e| ClientError::Connect(format!("binding UDP socket {bind}: {e}")))?;
    let connecting = endpoint
        .connect_with(config, server, &opts.server_name)
        .map_err(|e| ClientError::Connect(e.to_string()))?;

    let setup = async {
        let conn = connecting
            .await
            .map_err(|e| ClientError::from_handshake(&e))?;
        match handshake(&conn, opts).await {
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
                    "no answer from {server} within {CONNECT_TIMEOUT:?}"
                )));
            }
        };

    let max_frame_len = match welcome.max_frame_len as usize {
        0 => chat_protocol::MAX_FRAME_LEN,
        n => n.min(chat_protocol::MAX_FRAME_LEN),
    };
    let shared = Arc::new(Shared::new(
        AckBatcher::new(
            welcome.ack,
            welcome.catch_up_ack,
            std::time::Instant::now(),
            rand::random(),
        ),
        dedup,
        max_frame_len,
    ));
    let (writer, write_queue) = mpsc::channel(WRITE_QUEUE);
    tokio::spawn(session::writer(shared.clone(), send, write_queue));
    tokio::spawn(session::control_reader(
        shared.clone(),
        conn.clone(),
        recv,
        decoder,
    ));
    tokio::spawn(session::push_reader(shared.clone(), conn.clone(), pushes));
    if opts.reconnect {
        tokio::spawn(session::mover(shared.clone(), writer.clone(), conn.clone()));
    }
    tokio::spawn(session::ack_flusher(
        shared.clone(),
        writer.clone(),
        conn.clone(),
    ));
    let link = Link {
        conn,
        endpoint,
        shared,
        writer,
    };
    Ok((link, welcome))
}

/// Replaces the client's connection whenever it is lost, until the client closes, is
/// dropped, or the gateway refuses it for good (a bad token, say).
async fn reconnect_forever(inner: Weak<Inner>, pushes: PushSinks) {
    let mut next_server = 1;
    loop {
        let Some(conn) = inner.upgrade().map(|i| i.link().conn.clone()) else {
            return;
        };
        let lost = ClientError::from_connection(&conn.closed().await);
        match inner.upgrade() {
            Some(i) if !i.closing.load(Ordering::SeqCst) && lost.is_transient() => {}
            _ => return,
        }
        tracing::info!(reason = %lost, "connection lost; reconnecting");
        let mut backoff = RECONNECT_BACKOFF_MIN;
        loop {
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            let Some(i) = inner.upgrade() else { return };
            if i.closing.load(Ordering::SeqCst) {
                return;
            }
            let servers = i.opts.servers();
            let server = servers[next_server % servers.len()];
            next_server += 1;
            match open_link(&i.opts, server, i.dedup.clone(), pushes.clone()).await {
                Ok((link, _)) => {
                    tracing::info!(%server, "reconnected");
                    *i.link.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(link);
                    i.relinked.send_modify(|n| *n += 1);
                    // Stay on this server next time, unless it goes away too.
                    next_server -= 1;
                    let focus = i
                        .focus
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    if let Some(groups) = focus {
                        let client = Client { inner: i.clone() };
                        if let Err(error) = client.send_focus(groups).await {
                            tracing::warn!(%error, "sending the focus again failed");
                        }
                    }
                    break;
                }
                Err(e) if e.is_transient() => {
                    tracing::debug!(%server, error = %e, "reconnect attempt failed");
                }
                Err(e) => {
                    tracing::warn!(%server, error = %e, "gateway refused the reconnect; giving up");
                    return;
                }
            }
        }
    }
}

/// The next item of one of the client's notice queues, if one comes within `wait`.
async fn next_within<T>(queue: &Mutex<mpsc::UnboundedReceiver<T>>, wait: Duration) -> Option<T> {
    let mut queue = queue.lock().await;
    tokio::time::timeout(wait, queue.recv())
        .await
        .ok()
        .flatten()
}

/// `d` scaled by a random factor in [0.5, 1.5), so clients that lost the same gateway
/// do not come back in lockstep.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>())
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
