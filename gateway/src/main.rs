//! The `chat-gateway` binary: `serve`, `config`, `plugin` and `token`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chat_gateway::auth::TokenAuthority;
use chat_gateway::config::{LogConfig, LogFormat};
use chat_gateway::{Config, Gateway};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

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
        /// Keep data in this Redis (`redis://HOST:PORT`) instead of the embedded store.
        #[arg(long, env = "CHAT_REDIS_URL", conflicts_with = "redis_cluster")]
        redis: Option<String>,
        /// Keep data in this Redis Cluster instead: seed nodes, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "URL,...")]
        redis_cluster: Vec<String>,
        /// Admin HTTP API address [default: 127.0.0.1:9464, or the config's `admin.listen`].
        #[arg(long, value_name = "ADDR", conflicts_with = "no_admin")]
        admin: Option<SocketAddr>,
        /// Do not serve the admin HTTP API.
        #[arg(long)]
        no_admin: bool,
        /// Print the effective configuration (file, flags and environment; secrets
        /// masked) as TOML and exit.
        #[arg(long)]
        print_config: bool,
        #[command(flatten)]
        place: Place,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
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

#[derive(Subcommand)]
enum ConfigCommand {
    /// Report every problem of a config file (unknown keys, wrong types, inconsistent
    /// values), each with its key and line; exit 1 if there is any.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Check that a .wasm file is a plugin this gateway can load; print its name, version and hooks.
    Check { file: PathBuf },
    /// List the plugins bundled in this binary (load one with `path = "bundled:NAME"`).
    Bundled,
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
        Command::Serve {
            listen,
            redis,
            redis_cluster,
            admin,
            no_admin,
            print_config,
            place,
        } => {
            let mut config = place.config()?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if redis.is_some() {
                config.redis = redis;
                config.redis_cluster.clear();
            }
            if !redis_cluster.is_empty() {
                config.redis_cluster = redis_cluster;
                config.redis = None;
            }
            if let Some(admin) = admin {
                config.admin.listen = admin;
                config.admin.enabled = true;
            }
            if no_admin {
                config.admin.enabled = false;
            }
            if print_config {
                print!("{}", masked_toml(&config)?);
                return Ok(());
            }
            config.validate()?;
            init_logging(&config.log)?;
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            if config.runtime.worker_threads > 0 {
                runtime.worker_threads(config.runtime.worker_threads);
            }
            runtime
                .enable_all()
                .build()?
                .block_on(serve(config, place.config))
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let problems = chat_gateway::config::check(&text);
            if problems.is_empty() {
                println!("{}: ok", file.display());
                return Ok(());
            }
            for problem in &problems {
                println!("{}: {problem}", file.display());
            }
            eprintln!("{}: {} problem(s)", file.display(), problems.len());
            std::process::exit(1)
        }
        Command::Plugin { command } => match command {
            PluginCommand::Check { file } => {
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let plugin = runtime
                    .block_on(chat_gateway::plugins::check(&bytes))
                    .with_context(|| format!("{} is not a usable plugin", file.display()))?;
                println!("{}: {} {}", file.display(), plugin.name, plugin.version);
                println!("  world:    chat:gateway@0.1.0");
                println!("  hooks:    {}", plugin.hooks.join(", "));
                if !plugin.commands.is_empty() {
                    println!("  commands: {}", plugin.commands.join(", "));
                }
                Ok(())
            }
            PluginCommand::Bundled => {
                for (name, bytes) in chat_gateway::plugins::BUNDLED {
                    println!("bundled:{name} ({} KiB)", bytes.len() / 1024);
                }
                Ok(())
            }
        },
        Command::Token { user, ttl, place } => {
            let config = place.config()?;
            let secret = config.token_secret().context("reading the token secret")?;
            println!("{}", TokenAuthority::new(&secret).mint(&user, ttl)?);
            Ok(())
        }
    }
}

async fn serve(config: Config, config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let drain_deadline = Duration::from_secs(config.drain.deadline_s);
    let gateway = Gateway::start(config)
        .await
        .context("starting the gateway")?;
    tracing::info!(
        listen = %gateway.local_addr(),
        cert = %gateway.cert_path().display(),
        data = %data_dir.display(),
        "chat-gateway listening (ALPN chat/1); clients verify against the certificate"
    );
    if let Some(admin) = gateway.admin_addr() {
        tracing::info!(%admin, "admin API listening (GET /health, /ready, /metrics, /plugins, ...)");
    }
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => reload_plugins(&gateway, config_file.as_deref()).await,
            // Drained on the admin API: exit as after SIGTERM.
            _ = gateway.drained() => {
                gateway.shutdown().await;
                return Ok(());
            }
        }
    }
    // Clients move to other gateways (or come back after a restart) without loss.
    tracing::info!(deadline = ?drain_deadline, "draining");
    gateway.drain(drain_deadline).await;
    Ok(())
}

/// SIGHUP: reads the plugin chain from the config file again and swaps it in, keeping
/// every connection. A chain that fails to load leaves the running one in place.
async fn reload_plugins(gateway: &Gateway, config_file: Option<&std::path::Path>) {
    let specs = match config_file.map(Config::load).transpose() {
        Ok(config) => config.unwrap_or_default().plugin_specs(),
        Err(error) => {
            tracing::error!(%error, "plugin reload refused: the config does not load; the running plugins stay");
            return;
        }
    };
    if let Err(error) = gateway.reload_plugins(&specs).await {
        tracing::error!(%error, "plugin reload refused; the running plugins stay");
    }
}

/// Logs to stderr at `log.level` (`CHAT_LOG` overrides it), as text or JSON lines.
fn init_logging(log: &LogConfig) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("CHAT_LOG") {
        Ok(level) => EnvFilter::try_new(&level).with_context(|| format!("CHAT_LOG={level}"))?,
        Err(_) => EnvFilter::try_new(&log.level).context("log.level")?,
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    Ok(())
}

/// The config as TOML with secrets (token secret, admin token, Redis passwords) masked.
fn masked_toml(config: &Config) -> anyhow::Result<String> {
    const MASK: &str = "********";
    let mut config = config.clone();
    if config.auth.token_secret.is_some() || std::env::var_os("CHAT_TOKEN_SECRET").is_some() {
        config.auth.token_secret = Some(MASK.into());
    }
    if config.admin.token().is_some() {
        config.admin.token = Some(MASK.into());
    }
    let mask_url = |url: &mut String| {
        // redis://user:password@host → redis://user:********@host
        if let Some((scheme, rest)) = url.split_once("://")
            && let Some((credentials, host)) = rest.rsplit_once('@')
        {
            let user = credentials.split_once(':').map_or("", |(user, _)| user);
            *url = format!("{scheme}://{user}:{MASK}@{host}");
        }
    };
    config.redis.iter_mut().for_each(mask_url);
    config.redis_cluster.iter_mut().for_each(mask_url);
    // Print what will run: the plugin chain the gateway loads when none is configured.
    config.plugins = Some(config.plugin_specs());
    Ok(toml::to_string(&config)?)
}
