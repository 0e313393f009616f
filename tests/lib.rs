//! Test harness: real gateways on loopback (in-process, real QUIC, real redb in a
//! temporary directory) and clients from the reference client library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_client::{Client, ClientError, ConnectOptions, Message};
use chat_gateway::plugins::PluginSpec;
use chat_gateway::{Config, Gateway};

mod redis_servers;
pub use redis_servers::{RedisCluster, RedisServer};

/// The secret every test gateway signs tokens with, so a restarted gateway accepts old tokens.
pub const SECRET: &str = "test-secret-not-for-production";

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A gateway owned by a test, with its data directory.
pub struct TestGateway {
    gateway: Option<Gateway>,
    config: Config,
    cert: PathBuf,
    _data: Option<tempfile::TempDir>,
}

impl TestGateway {
    /// A gateway on a fresh data directory, on a free loopback port.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like [`start`](Self::start), with settings changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_path_buf(),
            ..Config::default()
        };
        config.auth.token_secret = Some(SECRET.into());
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        tweak(&mut config);
        let mut gateway = Self::launch(config).await;
        gateway._data = Some(data);
        gateway
    }

    async fn launch(config: Config) -> Self {
        // A just-closed endpoint may hold its UDP port for a moment after shutdown.
        let mut attempts = 0;
        let gateway = loop {
            match Gateway::start(config.clone()).await {
                Ok(gateway) => break gateway,
                Err(chat_gateway::StartError::Bind { .. }) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("gateway does not start: {error}"),
            }
        };
        let mut config = config;
        config.listen = gateway.local_addr();
        let cert = gateway.cert_path().to_path_buf();
        Self {
            gateway: Some(gateway),
            config,
            cert,
            _data: None,
        }
    }

    fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }

    pub fn cert(&self) -> &Path {
        &self.cert
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// This gateway's certificate and key, for other gateways of the same deployment
    /// (so a client trusting one trusts them all).
    pub fn tls(&self) -> chat_gateway::config::TlsConfig {
        chat_gateway::config::TlsConfig {
            cert: Some(self.cert.clone()),
            key: Some(self.cert.with_file_name("key.pem")),
        }
    }

    pub fn token(&self, user: &str) -> String {
        self.gateway().tokens().mint(user, 3600).expect("token")
    }

    pub fn options(&self, user: &str, device: &str) -> ConnectOptions {
        let mut options = ConnectOptions::new(self.addr(), self.cert(), self.token(user));
        options.device = device.into();
        options
    }

    /// Connects `user` from device "default".
    pub async fn connect(&self, user: &str) -> Client {
        self.connect_device(user, "default").await
    }

    pub async fn connect_device(&self, user: &str, device: &str) -> Client {
        Client::connect(self.options(user, device))
            .await
            .expect("client connects")
    }

    /// Connects with a raw token, for tests of refused tokens.
    pub async fn connect_with_token(&self, token: &str) -> Result<Client, ClientError> {
        Client::connect(ConnectOptions::new(self.addr(), self.cert(), token)).await
    }

    /// Stops the gateway (connections close) and starts it again on the same data and port.
    pub async fn restart(&mut self) {
        self.gateway
            .take()
            .expect("gateway running")
            .shutdown()
            .await;
        let relaunched = Self::launch(self.config.clone()).await;
        self.gateway = relaunched.gateway;
    }

    /// Drains the gateway (clients are told to move) until they have gone or `deadline`
    /// passes, then stops it; returns how many connections were still open. Its data
    /// directory stays until this is dropped.
    pub async fn drain(&mut self, deadline: Duration) -> usize {
        self.gateway
            .take()
            .expect("gateway running")
            .drain(deadline)
            .await
    }

    /// Every metric, as `/metrics` serves them.
    pub async fn metrics(&self) -> String {
        self.gateway().metrics().await
    }

    /// The admin API's address.
    pub fn admin(&self) -> SocketAddr {
        self.gateway().admin_addr().expect("admin API on")
    }

    /// This gateway's id in the gateway registry.
    pub fn gateway_id(&self) -> String {
        self.gateway().node().unread.gateway_id().to_owned()
    }

    /// The gateways its store holds live now (the registry that decides unread owners).
    pub async fn live_gateways(&self) -> Vec<String> {
        let now = chat_gateway::session::now_ms();
        let mut live = self
            .gateway()
            .node()
            .store
            .live_gateways("probe", now, 0)
            .await
            .expect("store reachable");
        live.retain(|id| id != "probe");
        live
    }

    /// Resolves once the gateway has drained (on the admin API, say).
    pub async fn drained(&self) -> usize {
        self.gateway().drained().await
    }

    /// Swaps the plugin chain in place.
    pub async fn reload_plugins(
        &self,
        specs: &[PluginSpec],
    ) -> Result<(), chat_gateway::plugins::PluginError> {
        self.gateway().reload_plugins(specs).await
    }

    /// (name, calls, faults, disabled) of each loaded plugin, in order.
    pub fn plugin_stats(&self) -> Vec<(String, u64, u64, bool)> {
        self.gateway()
            .node()
            .plugins
            .describe()
            .into_iter()
            .map(|p| (p.description.name, p.calls, p.faults, p.disabled))
            .collect()
    }

    /// How many unread count flushes this gateway has written.
    pub fn unread_flushes(&self) -> u64 {
        self.gateway().node().unread.stats().flushes
    }

    /// How many messages this gateway has counted in unread counts (and offline buffers).
    pub fn unread_counted(&self) -> u64 {
        self.gateway().node().unread.stats().messages
    }

    /// What this gateway has pushed and had acknowledged so far.
    pub fn delivery_stats(&self) -> chat_gateway::server::DeliveryStats {
        self.gateway().delivery_stats()
    }

    /// Local connections and groups with local members, as the gateway's node sees them.
    pub fn local_counts(&self) -> (usize, usize) {
        self.gateway().node().local_counts()
    }
}

/// Users as owned strings, for membership calls.
pub fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// The next `n` pushes, failing the test if they do not come in time.
pub async fn receive(client: &Client, n: usize) -> Vec<Message> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match client.next_message_timeout(PATIENCE).await {
            Some(message) => got.push(message),
            None => panic!(
                "{} got {} of {n} pushes: {:?}",
                client.user(),
                got.len(),
                got.iter().map(|m| m.seq).collect::<Vec<_>>()
            ),
        }
    }
    got
}

/// Asserts that no push arrives within `wait`.
pub async fn assert_quiet(client: &Client, wait: Duration) {
    if let Some(message) = client.next_message_timeout(wait).await {
        panic!("{} got an unexpected push: {message:?}", client.user());
    }
}

/// The bodies of messages as text.
pub fn texts(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

/// The seqs of messages.
pub fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// A QUIC connection to the gateway, verified and ALPN-negotiated, with nothing sent on it yet.
pub async fn raw_connection(gw: &TestGateway) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(chat_client::quic_client_config(gw.cert()).unwrap());
    endpoint
        .connect(gw.addr(), "localhost")
        .unwrap()
        .await
        .unwrap()
}

/// The application error code and reason a connection was closed with.
pub async fn closed_with(connection: &quinn::Connection) -> (chat_protocol::ErrorCode, String) {
    match tokio::time::timeout(PATIENCE, connection.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => (
            chat_protocol::ErrorCode(u16::try_from(close.error_code.into_inner()).unwrap()),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        Ok(other) => panic!("closed otherwise: {other}"),
        Err(_) => panic!("the gateway did not close the connection"),
    }
}

/// A plugin component built by the test command: `tests/plugins/NAME` becomes
/// `target/wasm32-wasip2/release/test_plugin_NAME.wasm`.
pub fn test_plugin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<binary>");
    let path = target
        .join("wasm32-wasip2/release")
        .join(format!("test_plugin_{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: build the test plugins first (./scripts/test.sh does)",
        path.display()
    );
    path
}

/// A spec for a test plugin with `failure` and small limits, so faults come fast.
pub fn test_plugin_spec(name: &str, failure: chat_gateway::plugins::Failure) -> PluginSpec {
    let mut spec = PluginSpec::new(test_plugin(name).display().to_string());
    spec.failure = failure;
    spec.cpu_ms = 20;
    spec.memory_mb = 16;
    spec.max_faults = 3;
    spec
}

/// A spec for a bundled plugin with `config` given as TOML.
pub fn bundled_spec(name: &str, config: &str) -> PluginSpec {
    let mut spec = PluginSpec::new(format!("bundled:{name}"));
    spec.config = config.parse().expect("config is TOML");
    spec
}

/// A built binary of this workspace (the test command builds them before the tests).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// An HTTP/1.1 answer: status and body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

impl HttpAnswer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP request (`Connection: close`) to the admin API, JSON body if any; a bearer
/// token if given. Small on purpose: the test talks to the socket as curl would.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin API reachable");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request += &format!("Authorization: Bearer {token}\r\n");
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        request += "Content-Type: application/json\r\n";
    }
    request += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut answer))
        .await
        .expect("admin API answers in time")
        .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "a chunked answer: {head}"
    );
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    HttpAnswer {
        status,
        body: body.to_owned(),
    }
}

/// The value of an unlabelled Prometheus sample, or of the labelled one given in full
/// (`chat_requests_total{request="Send",outcome="ok"}`); 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A `chat-gateway serve --config FILE` process, for tests that kill it; killed when dropped.
pub struct GatewayProcess {
    child: Option<std::process::Child>,
    pub addr: SocketAddr,
    _data: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts the binary with `config` (TOML, without `listen` and `data_dir`) and the
    /// test secret, and waits until it accepts connections.
    pub async fn start(config: &str, cert: &Path) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let file = data.path().join("gateway.toml");
        let config = format!(
            "listen = \"{addr}\"\ndata_dir = {:?}\n{config}\n[auth]\ntoken_secret = \"{SECRET}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            data.path()
        );
        std::fs::write(&file, config).unwrap();
        let child = std::process::Command::new(binary("chat-gateway"))
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chat-gateway starts");
        let process = Self {
            child: Some(child),
            addr,
            _data: data,
        };
        let token = chat_gateway::auth::TokenAuthority::new(SECRET.as_bytes())
            .mint("probe", 60)
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while Client::connect(ConnectOptions::new(addr, cert, token.clone()))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chat-gateway did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        process
    }

    /// SIGKILL: no drain, no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
