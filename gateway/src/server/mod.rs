//! The QUIC shell: the endpoint loop (`crate::quic`), one task per connection. Protocol decisions live in
//! `session` and `node`; this module only moves bytes between them and the sockets.

mod connection;
mod cursors;
mod pusher;
pub(crate) mod pushers;
mod quic_stats;
mod stats;

pub(crate) use quic_stats::QuicStats;
pub use stats::DeliveryStats;
pub(crate) use stats::ServerMetrics;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chat_protocol::{ALPN, Frame};
use quinn::{ServerConfig, VarInt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::auth::TokenAuthority;
use crate::bus::{Bus, BusError, LocalBus, RedisBus};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::node::{Control, Node};
use crate::plugins::{PluginError, PluginSpec, Plugins};
use crate::quic::{Accepted, Endpoint};
use crate::session::Publisher;
use crate::store::{EmbeddedStore, Metered, RedisStore, Store, StoreError, StoreMetrics};
use crate::tls::{Identity, TlsError, load_identity};
use crate::unread::Unread;

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("token secret: {0}")]
    Secret(std::io::Error),
    #[error("admin API on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("plugins: {0}")]
    Plugins(#[from] PluginError),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub node: Arc<Node>,
    pub auth: TokenAuthority,
    pub config: Config,
    pub metrics: Arc<ServerMetrics>,
    /// Every connection's QUIC transport counters, as last read from the endpoint.
    pub quic: Arc<quic_stats::QuicStats>,
    pub store_metrics: StoreMetrics,
    /// Every connection's delivery cursors, written together.
    pub cursors: Arc<cursors::Cursors>,
    /// The endpoint loop's pushers: every connection's push stream.
    pub pushes: pushers::PushSender,
    /// Running, draining (new connections refused), or drained.
    pub drain: watch::Sender<DrainState>,
    pub endpoint: Arc<Endpoint>,
}

/// Where a gateway is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainState {
    Serving,
    /// Clients were told to move; no new connection is accepted.
    Draining,
    /// Drained: this many connections were still open at the deadline (now closed).
    Drained {
        left: usize,
    },
}

impl Shared {
    pub fn draining(&self) -> bool {
        *self.drain.borrow() != DrainState::Serving
    }

    /// Drains the gateway, or waits for the drain under way: refuses new connections,
    /// tells every client to move (`GoAway` with `deadline`), waits until they have gone
    /// (their pending ACKs and cursors written as each leaves) or the deadline passes,
    /// counts every staged unread message, leaves the gateway registry, and closes what
    /// is left. Returns how many connections were still open at the end.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let mut state = self.drain.subscribe();
        self.endpoint.set_accepting(false);
        let first = self.drain.send_if_modified(|s| {
            let serving = *s == DrainState::Serving;
            if serving {
                *s = DrainState::Draining;
            }
            serving
        });
        if !first {
            return match *state
                .wait_for(|s| matches!(s, DrainState::Drained { .. }))
                .await
                .expect("the sender lives in self")
            {
                DrainState::Drained { left } => left,
                _ => unreachable!("waited for Drained"),
            };
        }
        let node = &self.node;
        let go_away = Frame::GoAway {
            deadline_ms: u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX),
            server: self.config.drain.server.clone().unwrap_or_default(),
        }
        .encode();
        let told = node.notify_every_connection(|| Control::Notice(go_away.clone()));
        tracing::info!(
            connections = told,
            ?deadline,
            "draining: clients told to move"
        );
        let left = node
            .connections_gone(tokio::time::Instant::now() + deadline)
            .await;
        self.cursors.flush().await;
        node.unread.flush_all().await;
        node.unread.retire().await;
        let code = VarInt::from_u32(chat_protocol::ErrorCode::SHUTTING_DOWN.0.into());
        self.endpoint.close(code, b"gateway shutting down");
        tracing::info!(left, "drained");
        self.drain.send_replace(DrainState::Drained { left });
        left
    }
}

impl Shared {
    /// Reads the transport counters of every connection into `quic`, for `/metrics`.
    pub async fn refresh_quic_totals(&self) {
        self.quic.set(self.endpoint.totals().await);
    }
}

/// A running gateway.
pub struct Gateway {
    endpoint: Arc<Endpoint>,
    shared: Arc<Shared>,
    cert_path: PathBuf,
    tasks: JoinSet<()>,
    metrics: Arc<Metrics>,
    admin_addr: Option<SocketAddr>,
}

impl Gateway {
    /// Opens the store, binds the endpoint and starts accepting connections.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        config.validate()?;
        let identity = load_identity(
            &config.data_dir,
            config.tls.cert.as_deref(),
            config.tls.key.as_deref(),
        )?;
        let auth = TokenAuthority::new(&config.token_secret().map_err(StartError::Secret)?);
        let (backend, bus): (Arc<dyn Store>, Arc<dyn Bus>) = match config.redis_target() {
            Some(redis) => (
                Arc::new(RedisStore::connect(&redis).await?),
                Arc::new(RedisBus::connect(&redis).await?),
            ),
            None => (
                Arc::new(EmbeddedStore::open(&config.data_dir)?),
                Arc::new(LocalBus::new()),
            ),
        };
        let store_metrics = StoreMetrics::default();
        let store: Arc<dyn Store> = Arc::new(Metered::new(backend, store_metrics.clone()));
        let unread = Unread::start(store.clone(), bus.clone(), config.flush_policy());
        let publisher = Arc::new(Publisher::new(store.clone(), bus.clone(), unread));
        let default_ack = (
            config.delivery.ack_policy(),
            config.delivery.catch_up_ack_policy(),
        );
        let plugins = Plugins::new(store.clone(), publisher.clone(), default_ack)?;
        for plugin in plugins.load(&config.plugin_specs()).await? {
            tracing::info!(plugin = %plugin.name, version = %plugin.version, hooks = ?plugin.hooks, "plugin loaded");
        }
        let (pushes, inbox) = pushers::channel();
        let node = Node::new(
            store.clone(),
            bus,
            plugins.clone(),
            publisher,
            pushes.clone(),
        );
        let server_metrics = Arc::new(ServerMetrics::default());
        let cursors = cursors::Cursors::new(store.clone());
        let app = pushers::Pushers::new(
            inbox,
            pushers::Env {
                store,
                plugins,
                metrics: server_metrics.clone(),
                cursors: cursors.clone(),
                inbox: pushes.clone(),
                held: config.delivery.queue,
            },
        );
        let cert_path = identity.cert_path.clone();
        let server_config = server_config(identity, &config)?;
        let (endpoint, accepted) =
            bind(&config, server_config, Box::new(app)).map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let endpoint = Arc::new(endpoint);
        let shared = Arc::new(Shared {
            node: node.clone(),
            auth,
            config,
            metrics: server_metrics,
            quic: Arc::default(),
            store_metrics,
            cursors,
            pushes,
            drain: watch::Sender::new(DrainState::Serving),
            endpoint: endpoint.clone(),
        });
        let metrics = Arc::new(Metrics::new(&shared));
        let mut tasks = JoinSet::new();
        let admin_addr = if shared.config.admin.enabled {
            let addr = shared.config.admin.listen;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::AdminBind { addr, source })?;
            let addr = listener
                .local_addr()
                .map_err(|source| StartError::AdminBind { addr, source })?;
            tasks.spawn(crate::admin::serve(
                listener,
                shared.clone(),
                metrics.clone(),
            ));
            Some(addr)
        } else {
            None
        };
        tasks.spawn(node.run_events());
        tasks.spawn(cursors::Cursors::flush_forever(
            Arc::downgrade(&shared.cursors),
            shared.config.flush_policy().every,
        ));
        tasks.spawn(accept_loop(accepted, shared.clone()));
        Ok(Gateway {
            endpoint,
            shared,
            cert_path,
            tasks,
            metrics,
            admin_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// The certificate clients verify the gateway against.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn tokens(&self) -> &TokenAuthority {
        &self.shared.auth
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.shared.node
    }

    /// Where the admin API listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// What this gateway's connections have pushed and had acknowledged so far.
    pub fn delivery_stats(&self) -> DeliveryStats {
        self.shared.metrics.delivery()
    }

    /// Every metric, in the Prometheus text format (what `/metrics` serves).
    pub async fn metrics(&self) -> String {
        self.shared.refresh_quic_totals().await;
        self.metrics.encode()
    }

    /// Resolves once the gateway has drained, whoever started it (SIGTERM, the admin
    /// API); returns how many connections were left at the deadline.
    pub async fn drained(&self) -> usize {
        let mut state = self.shared.drain.subscribe();
        match *state
            .wait_for(|s| matches!(s, DrainState::Drained { .. }))
            .await
            .expect("the sender lives in shared")
        {
            DrainState::Drained { left } => left,
            _ => unreachable!("waited for Drained"),
        }
    }

    /// Replaces the plugin chain without touching connections. If any plugin fails to
    /// load, the running chain stays as it was.
    pub async fn reload_plugins(&self, specs: &[PluginSpec]) -> Result<(), PluginError> {
        let loaded = self.shared.node.plugins.load(specs).await?;
        let names: Vec<&str> = loaded.iter().map(|p| p.name.as_str()).collect();
        tracing::info!(plugins = ?names, "plugins reloaded");
        Ok(())
    }

    /// Drains the gateway (see [`Shared::drain`]), then shuts it down. Returns how many
    /// connections were still open at the deadline.
    pub async fn drain(self, deadline: Duration) -> usize {
        let left = self.shared.drain(deadline).await;
        self.shutdown().await;
        left
    }

    /// Closes every connection (clients see `shutting_down`), stops all tasks and
    /// releases the store, so the data directory can be opened again.
    pub async fn shutdown(mut self) {
        let code = VarInt::from_u32(chat_protocol::ErrorCode::SHUTTING_DOWN.0.into());
        self.endpoint.close(code, b"gateway shutting down");
        self.tasks.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        // The loop's pushers hold the store: it is closed once this returns.
        self.endpoint.stop().await;
    }

    /// Serves until the accept loop ends (it does not, short of an endpoint error).
    pub async fn run(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn accept_loop(mut accepted: mpsc::UnboundedReceiver<Accepted>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            next = accepted.recv() => match next {
                Some(Accepted::Link(link)) => {
                    connections.spawn(connection::serve(link, shared.clone()));
                }
                Some(Accepted::HandshakeFailed(error)) => {
                    tracing::debug!(%error, "handshake failed");
                    shared.metrics.reject("handshake_failed");
                }
                // A draining gateway takes no one new: clients try their next gateway.
                Some(Accepted::Refused) => shared.metrics.reject("draining"),
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Dropping the set aborts the connection tasks, releasing their hold on the node.
    connections.shutdown().await;
}

/// The endpoint on its UDP socket, with the socket buffers fan-out bursts need.
fn bind(
    config: &Config,
    server_config: ServerConfig,
    app: Box<dyn crate::quic::Application>,
) -> std::io::Result<(Endpoint, mpsc::UnboundedReceiver<Accepted>)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(config.listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    let buffer = config.transport.udp_buffer_kb as usize * 1024;
    // Best effort: the kernel caps what it grants; quinn works with less, only drops more.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    if config.listen.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&config.listen.into())?;
    Endpoint::start(
        socket.into(),
        quinn::EndpointConfig::default(),
        Arc::new(server_config),
        app,
    )
}

pub(crate) fn server_config(
    identity: Identity,
    config: &Config,
) -> Result<ServerConfig, StartError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.certs, identity.key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| StartError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut server_config = ServerConfig::with_crypto(Arc::new(quic));
    let t = &config.transport;
    let mut transport = quinn::TransportConfig::default();
    // One control stream from the client, one push stream from us: nothing else to allow.
    transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.stream_receive_window(VarInt::from_u32(t.stream_window_kb * 1024));
    transport.receive_window(VarInt::from_u32(t.conn_window_kb * 1024));
    transport.send_window(u64::from(t.conn_window_kb) * 1024);
    transport.max_idle_timeout(Some(
        t.idle_timeout()
            .try_into()
            .expect("idle timeout fits a QUIC varint"),
    ));
    transport.datagram_receive_buffer_size(None);
    server_config.transport_config(Arc::new(transport));
    server_config.migration(true);
    Ok(server_config)
}
