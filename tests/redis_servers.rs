//! `redis-server` processes of the test's own, on free loopback ports, stopped when
//! dropped — never the machine's shared instance on 6379.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use crate::PATIENCE;

/// One Redis server. [`start_durable`](Self::start_durable) keeps an append-only file
/// (fsync on every write) so [`restart`](Self::restart) loses nothing acknowledged.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    pub url: String,
    durable: bool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A server that keeps nothing on disk.
    pub async fn start() -> Self {
        Self::launch(false).await
    }

    /// A server with AOF, `appendfsync always`.
    pub async fn start_durable() -> Self {
        Self::launch(true).await
    }

    async fn launch(durable: bool) -> Self {
        let port = free_port(|_| true);
        let mut server = Self {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}"),
            durable,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        server.spawn(&[]).await;
        server
    }

    async fn spawn(&mut self, extra: &[&str]) {
        let persistence: &[&str] = if self.durable {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = redis_server(self.port, self.dir.path(), persistence, extra);
        self.child = Some(child);
        wait_for_port(self.port).await;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL): clients see the connection drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed server again on the same port and directory.
    pub async fn revive(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.spawn(&[]).await;
    }

    /// Kill and start again: with [`start_durable`](Self::start_durable), every write
    /// Redis acknowledged survives.
    pub async fn restart(&mut self) {
        self.kill();
        self.revive().await;
    }

    /// `redis-cli` against this server; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cli(&["KEYS", "*"])
            .lines()
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    }

    /// Commands the server has processed since it started (`INFO stats`).
    pub fn commands_processed(&self) -> u64 {
        info_field(&self.cli(&["INFO", "stats"]), "total_commands_processed")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters (no replicas), made with `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<(u16, Child)>,
    _dirs: Vec<tempfile::TempDir>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..3 {
            // The cluster bus listens on port + 10000.
            let port = free_port(|p| p < 55_000 && port_is_free(p + 10_000));
            let dir = tempfile::tempdir().expect("temp dir");
            let child = redis_server(
                port,
                dir.path(),
                &["--appendonly", "no"],
                &["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"],
            );
            nodes.push((port, child));
            dirs.push(dir);
        }
        for (port, _) in &nodes {
            wait_for_port(*port).await;
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = Self { nodes, _dirs: dirs };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !cluster
            .nodes
            .iter()
            .all(|(port, _)| cli(*port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster
    }

    /// The seed node URLs to configure a gateway with.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// The ports of the masters.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(port, _)| *port).collect()
    }

    /// `redis-cli` against one node; its standard output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(port, args)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn redis_server(port: u16, dir: &Path, persistence: &[&str], extra: &[&str]) -> Child {
    redis_harness::spawn(port, dir, &[persistence, extra].concat())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn info_field(info: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO has no {field}"))
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port(acceptable: impl Fn(u16) -> bool) -> u16 {
    loop {
        let port = redis_harness::free_port().expect("a free loopback port");
        if acceptable(port) {
            return port;
        }
    }
}

async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis-server did not come up on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
