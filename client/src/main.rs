//! `chat`: a command-line client for the chat gateway, stable enough for scripts.
//!
//! Output is one line per item, plain text or (`--json`) one JSON object per line.
//! Gateway errors print `error: <code name> (<code number>): <message>` and exit 1.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use chat_client::{
    Client, ClientError, ConnectOptions, Conversation, HistoryPage, MemberInfo, Message, Role, Sent,
};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "chat",
    version,
    about = "Command-line client for the chat gateway"
)]
struct Cli {
    /// Gateway address, host:port.
    #[arg(
        long,
        env = "CHAT_SERVER",
        default_value = "127.0.0.1:4433",
        global = true
    )]
    server: String,
    /// Name the gateway's certificate must be valid for.
    #[arg(long, default_value = "localhost", global = true)]
    server_name: String,
    /// PEM file with the certificate to trust for the gateway.
    #[arg(
        long,
        env = "CHAT_CA",
        default_value = "./data/tls/cert.pem",
        global = true
    )]
    ca: PathBuf,
    /// Bearer token (empty: let the gateway say it is missing).
    #[arg(
        long,
        env = "CHAT_TOKEN",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    token: String,
    /// Device id, so several sessions of one user are told apart.
    #[arg(long, env = "CHAT_DEVICE", default_value = "cli", global = true)]
    device: String,
    /// Print one JSON object per line.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create and manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Send a text message; prints its seq.
    Send {
        group: String,
        #[arg(allow_hyphen_values = true)]
        text: String,
        /// Client message id, to retry a send idempotently.
        #[arg(long)]
        id: Option<String>,
    },
    /// Print a page of a group's history, oldest first.
    History {
        group: String,
        /// Messages right after this seq.
        #[arg(long, conflicts_with = "before")]
        after: Option<u64>,
        /// Messages right before this seq (default: the latest).
        #[arg(long)]
        before: Option<u64>,
        #[arg(long, default_value_t = 50)]
        limit: u16,
    },
    /// Print (and acknowledge) messages as they arrive.
    Listen {
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds in total (fractions allowed).
        #[arg(long, value_parser = parse_seconds)]
        timeout: Option<Duration>,
    },
    /// List your groups, most recent activity first.
    Conversations {
        #[arg(long, default_value_t = 100)]
        limit: u16,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a group you own.
    Create {
        group: String,
        /// Initial members besides you, comma-separated.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Add members (owner only).
    Add {
        group: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove members (owner only).
    Remove {
        group: String,
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Leave a group.
    Leave { group: String },
    /// List members: `user role joined_seq`.
    Members { group: String },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<ClientError>() {
                Some(ClientError::Refused { code, reason: text })
                | Some(ClientError::Server {
                    code,
                    message: text,
                }) => eprintln!("error: {} ({}): {text}", code.name(), code.0),
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = resolve(&cli.server).await?;
    let opts = ConnectOptions {
        server,
        server_name: cli.server_name,
        ca_pem: cli.ca,
        token: cli.token,
        device: cli.device,
    };
    let client = Client::connect(opts).await?;
    let out = Output { json: cli.json };
    let result = execute(&client, &out, cli.command).await;
    // Also on errors: flushes acks and tells the gateway we are gone.
    client.close().await;
    result
}

async fn execute(client: &Client, out: &Output, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Group(command) => group(client, out, command).await,
        Command::Send { group, text, id } => {
            let sent = match id {
                Some(id) => client.send_with_id(&group, &id, text).await?,
                None => client.send(&group, text).await?,
            };
            out.sent(&sent)
        }
        Command::History {
            group,
            after,
            before,
            limit,
        } => {
            let page = match (after, before) {
                (Some(after), _) => HistoryPage::After(after),
                (None, before) => HistoryPage::Before(before.unwrap_or(u64::MAX)),
            };
            let mut messages = client.history(&group, page, limit).await?;
            messages.sort_by_key(|m| m.seq);
            messages.iter().try_for_each(|m| out.message(m))
        }
        Command::Listen { count, timeout } => listen(client, out, count, timeout).await,
        Command::Conversations { limit } => client
            .conversations(limit)
            .await?
            .iter()
            .try_for_each(|c| out.conversation(c)),
    }
}

async fn group(client: &Client, out: &Output, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Create { group, members } => client.create_group(&group, &members).await?,
        GroupCommand::Add { group, users } => client.add_members(&group, &users).await?,
        GroupCommand::Remove { group, users } => client.remove_members(&group, &users).await?,
        GroupCommand::Leave { group } => client.leave_group(&group).await?,
        GroupCommand::Members { group } => {
            for member in client.members(&group).await? {
                out.member(&member)?;
            }
        }
    }
    Ok(())
}

/// Prints pushes until `count` of them, the timeout, Ctrl-C, or the connection's end (an error).
async fn listen(
    client: &Client,
    out: &Output,
    count: Option<u64>,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        let message = tokio::select! {
            m = client.next_message() => m,
            _ = &mut until_deadline => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match message {
            Some(m) => {
                out.message(&m)?;
                seen += 1;
            }
            None => return Err(client.close_reason().unwrap_or(ClientError::Closed).into()),
        }
    }
    Ok(())
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| "expected a non-negative number of seconds".into())
}

/// Resolves `host:port`, preferring IPv4 (the gateway's usual bind).
async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = addr.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve server address {addr:?}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("server address {addr:?} resolves to nothing"))
}

/// Formats results as text lines or JSON lines.
struct Output {
    json: bool,
}

#[derive(Serialize)]
struct JsonMember<'a> {
    user: &'a str,
    role: &'a str,
    joined_seq: u64,
}

#[derive(Serialize)]
struct JsonMessage<'a> {
    group: &'a str,
    seq: u64,
    sender: &'a str,
    ts_ms: u64,
    text: &'a str,
}

#[derive(Serialize)]
struct JsonSent<'a> {
    group: &'a str,
    seq: u64,
    ts_ms: u64,
    duplicate: bool,
}

#[derive(Serialize)]
struct JsonConversation<'a> {
    group: &'a str,
    head_seq: u64,
    last_ts_ms: u64,
}

impl Output {
    fn line(&self, text: &str) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")?;
        stdout.flush()?;
        Ok(())
    }

    fn json_line(&self, value: &impl Serialize) -> anyhow::Result<()> {
        self.line(&serde_json::to_string(value)?)
    }

    fn member(&self, m: &MemberInfo) -> anyhow::Result<()> {
        let role = match m.role {
            Role::Owner => "owner",
            Role::Member => "member",
        };
        if self.json {
            self.json_line(&JsonMember {
                user: &m.user,
                role,
                joined_seq: m.joined_seq,
            })
        } else {
            self.line(&format!("{} {role} {}", m.user, m.joined_seq))
        }
    }

    fn message(&self, m: &Message) -> anyhow::Result<()> {
        let text = String::from_utf8_lossy(&m.body);
        if self.json {
            self.json_line(&JsonMessage {
                group: &m.group,
                seq: m.seq,
                sender: &m.sender,
                ts_ms: m.ts_ms,
                text: &text,
            })
        } else {
            self.line(&format!("[{} #{}] {}: {text}", m.group, m.seq, m.sender))
        }
    }

    fn sent(&self, s: &Sent) -> anyhow::Result<()> {
        if self.json {
            self.json_line(&JsonSent {
                group: &s.group,
                seq: s.seq,
                ts_ms: s.ts_ms,
                duplicate: s.duplicate,
            })
        } else {
            self.line(&s.seq.to_string())
        }
    }

    fn conversation(&self, c: &Conversation) -> anyhow::Result<()> {
        if self.json {
            self.json_line(&JsonConversation {
                group: &c.group,
                head_seq: c.head_seq,
                last_ts_ms: c.last_ts_ms,
            })
        } else {
            self.line(&format!("{} {} {}", c.group, c.head_seq, c.last_ts_ms))
        }
    }
}
