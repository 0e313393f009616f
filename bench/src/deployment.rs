//! The system under test: `chat-gateway serve` processes (one, or several on one Redis),
//! each started with a config of its variant, and the `redis-server` they share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procfs;

/// The token secret every bench gateway signs with.
pub const SECRET: &str = "chat-bench-secret";

/// How a run deploys the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// As shipped: default config (a worker per core, bundled plugins, embedded store).
    Default,
    /// One tokio worker (as the ceiling), bundled plugins, embedded store.
    Embedded,
    /// One worker, no plugins, embedded store.
    NoPlugins,
    /// One worker, bundled plugins, state in Redis.
    Redis,
    /// Three gateways of one worker each on one Redis, members spread over them.
    ThreeGateways,
}

impl Variant {
    fn gateways(self) -> usize {
        if self == Variant::ThreeGateways { 3 } else { 1 }
    }

    fn redis(self) -> bool {
        matches!(self, Variant::Redis | Variant::ThreeGateways)
    }
}

/// The gateway binary and what to add to each generated config.
pub struct Launch {
    pub binary: PathBuf,
    /// TOML appended to the config (after every generated table).
    pub extra_config: String,
}

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

pub struct Deployment {
    pub gateways: Vec<Gateway>,
    redis: Option<redis_harness::Redis>,
    pub cert: PathBuf,
    _dir: tempfile::TempDir,
}

impl Deployment {
    /// Starts the variant's processes and waits until every gateway is ready.
    pub async fn start(variant: Variant, launch: &Launch) -> anyhow::Result<Self> {
        let binary = &launch.binary;
        let dir = tempfile::tempdir()?;
        let redis = match variant.redis() {
            true => Some(redis_harness::Redis::start(
                dir.path(),
                redis_harness::AOF_EVERYSEC,
            )?),
            false => None,
        };
        let shared_tls = dir.path().join("tls");
        let mut gateways = Vec::new();
        for i in 0..variant.gateways() {
            let data = dir.path().join(format!("gw{i}"));
            std::fs::create_dir_all(&data)?;
            let addr = free_udp_port()?;
            let admin = free_tcp_port()?;
            let mut config = format!(
                "listen = \"{addr}\"\ndata_dir = {data:?}\n\n[auth]\ntoken_secret = \"{SECRET}\"\n\n\
                 [admin]\nlisten = \"{admin}\"\n\n[log]\nlevel = \"warn\"\n"
            );
            if let Some(redis) = &redis {
                config = format!("redis = \"{}\"\n{config}", redis.url());
            }
            if variant != Variant::Default {
                config += "\n[runtime]\nworker_threads = 1\n";
            }
            if i > 0 {
                // One certificate for all: the first gateway's.
                config += &format!(
                    "\n[tls]\ncert = {:?}\nkey = {:?}\n",
                    shared_tls.join("cert.pem"),
                    shared_tls.join("key.pem")
                );
            }
            if variant == Variant::NoPlugins {
                config = format!("plugins = []\n{config}");
            }
            config = format!("{config}\n{}\n", launch.extra_config);
            let file = data.join("gateway.toml");
            std::fs::write(&file, config)?;
            let child = Command::new(binary)
                .arg("serve")
                .arg("--config")
                .arg(&file)
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let gateway = Gateway { child, addr, admin };
            wait_ready(&gateway).await?;
            if i == 0 {
                std::fs::create_dir_all(&shared_tls)?;
                for file in ["cert.pem", "key.pem"] {
                    std::fs::copy(data.join("tls").join(file), shared_tls.join(file))?;
                }
            }
            gateways.push(gateway);
        }
        Ok(Self {
            gateways,
            redis,
            cert: shared_tls.join("cert.pem"),
            _dir: dir,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.gateways.iter().map(|g| g.child.id()).collect()
    }

    /// CPU time the gateways have used so far, together.
    pub fn cpu(&self) -> Duration {
        self.pids().into_iter().map(procfs::cpu).sum()
    }

    pub fn rss_kb(&self) -> u64 {
        self.pids().into_iter().map(procfs::rss_kb).sum()
    }

    pub fn peak_rss_kb(&self) -> u64 {
        self.pids().into_iter().map(procfs::peak_rss_kb).sum()
    }

    pub fn redis_cpu(&self) -> Option<Duration> {
        self.redis.as_ref().map(|r| procfs::cpu(r.id()))
    }

    /// Counters summed over every gateway's `/metrics` (one scrape each).
    pub async fn counters<const N: usize>(&self, series: [&str; N]) -> [f64; N] {
        let mut totals = [0.0; N];
        for gateway in &self.gateways {
            if let Ok((200, text)) = http_get(gateway.admin, "/metrics").await {
                for line in text.lines() {
                    for (name, total) in series.iter().zip(&mut totals) {
                        if let Some(value) =
                            line.strip_prefix(name).and_then(|l| l.strip_prefix(' '))
                        {
                            *total += value.trim().parse::<f64>().unwrap_or(0.0);
                        }
                    }
                }
            }
        }
        totals
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for gateway in &mut self.gateways {
            let _ = gateway.child.kill();
            let _ = gateway.child.wait();
        }
    }
}

async fn wait_ready(gateway: &Gateway) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = http_get(gateway.admin, "/ready").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the gateway on {} did not get ready", gateway.addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A GET on the admin API: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let (head, body) = answer.split_once("\r\n\r\n").context("not HTTP")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, body.to_owned()))
}

fn free_udp_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_tcp_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
