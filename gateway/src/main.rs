//! The `chat-gateway` binary: `serve` and `token`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use chat_gateway::auth::TokenAuthority;
use chat_gateway::{Config, Gateway};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chat-gateway",
    version,
    about = "QUIC chat gateway for very large groups"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// UDP address to listen on [default: 127.0.0.1:4433, or the config's `listen`].
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[command(flatten)]
        place: Place,
    },
    /// Print a token for a user, signed with this deployment's secret.
    Token {
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        #[command(flatten)]
        place: Place,
    },
}

#[derive(clap::Args)]
struct Place {
    /// Data directory: store, generated certificate, token secret [default: ./data, or the config's `data_dir`].
    #[arg(long)]
    data: Option<PathBuf>,
    /// TOML configuration file (see docs/operations.md).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl Place {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(data) = &self.data {
            config.data_dir = data.clone();
        }
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { listen, place } => {
            let mut config = place.config()?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            init_logging();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(config))
        }
        Command::Token { user, ttl, place } => {
            let config = place.config()?;
            let secret = config.token_secret().context("reading the token secret")?;
            println!("{}", TokenAuthority::new(&secret).mint(&user, ttl)?);
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let gateway = Gateway::start(config)
        .await
        .context("starting the gateway")?;
    tracing::info!(
        listen = %gateway.local_addr(),
        cert = %gateway.cert_path().display(),
        data = %data_dir.display(),
        "chat-gateway listening (ALPN chat/1); clients verify against the certificate"
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CHAT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
