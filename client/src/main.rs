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
    Client, ClientError, ConnectOptions, Conversation, HistoryPage, MemberInfo, Message, Role,
    Sent, UnreadCounts,
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
        /// Send privately to these members only, comma-separated.
        #[arg(long, value_delimiter = ',', value_parser = parse_user)]
        to: Vec<String>,
    },
    /// Delete a message for yourself only; prints the gateway's answer.
    Delete { group: String, seq: u64 },
    /// Run a command owned by a gateway plugin; prints its answer.
    #[command(name = "command")]
    Plugin {
        group: String,
        name: String,
        /// The command's arguments (put `--` before any that start with `-`).
        #[arg(allow_negative_numbers = true)]
        args: Vec<String>,
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
    /// Print (and acknowledge) messages as they arrive; reconnects (and resumes without
    /// loss or repeats) if the gateway goes away.
    Listen {
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds in total (fractions allowed).
        #[arg(long, value_parser = parse_seconds)]
        timeout: Option<Duration>,
        /// Show only these groups, comma-separated (empty: none): the others are in the
        /// background and print compact activity notices instead of messages.
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        focus: Option<Vec<String>>,
    },
    /// Your unread counts: the total, then each group with unread messages.
    Unread,
    /// Mark a group read up to SEQ (its latest message if SEQ is past it).
    Read { group: String, seq: u64 },
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
        server_name: cli.server_name,
        device: cli.device,
        // A listener outlives a gateway restart; one-shot commands just report the error.
        reconnect: matches!(cli.command, Command::Listen { .. }),
        ..ConnectOptions::new(server, cli.ca, cli.token)
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
        Command::Send {
            group,
            text,
            id,
            to,
        } => {
            let sent = match (id, to.is_empty()) {
                (Some(id), true) => client.send_with_id(&group, &id, text).await?,
                (None, true) => client.send(&group, text).await?,
                (Some(id), false) => client.send_private_with_id(&group, &id, &to, text).await?,
                (None, false) => client.send_private(&group, &to, text).await?,
            };
            out.sent(&sent)
        }
        Command::Delete { group, seq } => {
            let result = client.delete_for_me(&group, seq).await?;
            out.deleted(&group, seq, &result)
        }
        Command::Plugin { group, name, args } => {
            let result = client.command(&group, &name, &args).await?;
            out.command_result(&group, &name, &result)
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
        Command::Listen {
            count,
            timeout,
            focus,
        } => {
            if let Some(mut groups) = focus {
                groups.retain(|g| !g.is_empty());
                client.focus(&groups).await?;
            }
            listen(client, out, count, timeout).await
        }
        Command::Unread => out.unread(&client.unread().await?),
        Command::Read { group, seq } => Ok(client.mark_read(&group, seq).await?),
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
            Some(s) = client.next_skipped(Duration::from_secs(3600)) => {
                eprintln!(
                    "skipped {} seqs {}..={}: too far behind to push (see `chat history`)",
                    s.group, s.first, s.last
                );
                continue;
            }
            Some(groups) = client.next_activity(Duration::from_secs(3600)) => {
                for a in groups {
                    eprintln!("activity {}: up to seq {}, {} not pushed", a.group, a.seq, a.pending);
                }
                continue;
            }
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

fn parse_user(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("user ids must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
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

/// A message; `hidden` and `private` appear only when true.
#[derive(Serialize)]
struct JsonMessage<'a> {
    group: &'a str,
    seq: u64,
    sender: &'a str,
    ts_ms: u64,
    text: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    hidden: bool,
    #[serde(skip_serializing_if = "is_false")]
    private: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Serialize)]
struct JsonSent<'a> {
    group: &'a str,
    seq: u64,
    ts_ms: u64,
    duplicate: bool,
}

#[derive(Serialize)]
struct JsonDeleted<'a> {
    group: &'a str,
    seq: u64,
    result: &'a str,
}

#[derive(Serialize)]
struct JsonCommandResult<'a> {
    group: &'a str,
    command: &'a str,
    result: &'a str,
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
        if self.json {
            self.json_line(&json_message(m, &String::from_utf8_lossy(&m.body)))
        } else {
            self.line(&message_line(m))
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

    fn deleted(&self, group: &str, seq: u64, result: &str) -> anyhow::Result<()> {
        if self.json {
            self.json_line(&JsonDeleted { group, seq, result })
        } else {
            self.line(result)
        }
    }

    fn command_result(&self, group: &str, command: &str, result: &str) -> anyhow::Result<()> {
        if self.json {
            self.json_line(&JsonCommandResult {
                group,
                command,
                result,
            })
        } else {
            self.line(result)
        }
    }

    /// `{"total":N,"groups":{"G":N,...}}` (every group), or `total N` and a line per
    /// group with unread messages.
    fn unread(&self, u: &UnreadCounts) -> anyhow::Result<()> {
        if self.json {
            let groups: serde_json::Map<String, serde_json::Value> = u
                .groups
                .iter()
                .map(|g| (g.group.clone(), g.count.into()))
                .collect();
            return self.json_line(&serde_json::json!({ "total": u.total, "groups": groups }));
        }
        self.line(&format!("total {}", u.total))?;
        u.groups
            .iter()
            .filter(|g| g.count > 0)
            .try_for_each(|g| self.line(&format!("{} {}", g.group, g.count)))
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

/// The JSON form of a message: a hidden placeholder has empty sender and text.
fn json_message<'a>(m: &'a Message, text: &'a str) -> JsonMessage<'a> {
    if m.is_hidden() {
        return JsonMessage {
            group: &m.group,
            seq: m.seq,
            sender: "",
            ts_ms: m.ts_ms,
            text: "",
            hidden: true,
            private: false,
        };
    }
    JsonMessage {
        group: &m.group,
        seq: m.seq,
        sender: &m.sender,
        ts_ms: m.ts_ms,
        text,
        hidden: false,
        private: m.flags & Message::FLAG_PRIVATE != 0,
    }
}

/// The text form of a message: `[GROUP #SEQ] SENDER: TEXT`, `[GROUP #SEQ] SENDER (private):
/// TEXT`, or `[GROUP #SEQ] (hidden)`.
fn message_line(m: &Message) -> String {
    if m.is_hidden() {
        return format!("[{} #{}] (hidden)", m.group, m.seq);
    }
    let text = String::from_utf8_lossy(&m.body);
    let private = if m.flags & Message::FLAG_PRIVATE != 0 {
        " (private)"
    } else {
        ""
    };
    format!("[{} #{}] {}{private}: {text}", m.group, m.seq, m.sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(flags: u8, sender: &str, body: &'static str) -> Message {
        Message {
            group: "g1".into(),
            seq: 7,
            sender: sender.into(),
            ts_ms: 1_700_000_000_000,
            flags,
            body: body.into(),
        }
    }

    fn json(m: &Message) -> String {
        serde_json::to_string(&json_message(m, &String::from_utf8_lossy(&m.body))).unwrap()
    }

    #[test]
    fn plain_messages_keep_their_shape() {
        let m = message(0, "bob", "hi");
        assert_eq!(message_line(&m), "[g1 #7] bob: hi");
        assert_eq!(
            json(&m),
            r#"{"group":"g1","seq":7,"sender":"bob","ts_ms":1700000000000,"text":"hi"}"#
        );
        // Catch-up is a delivery detail, not shown.
        let m = message(Message::FLAG_CATCH_UP, "bob", "hi");
        assert_eq!(message_line(&m), "[g1 #7] bob: hi");
        assert!(!json(&m).contains("private"));
    }

    #[test]
    fn private_messages_say_so() {
        let m = message(
            Message::FLAG_PRIVATE | Message::FLAG_CATCH_UP,
            "bob",
            "psst",
        );
        assert_eq!(message_line(&m), "[g1 #7] bob (private): psst");
        assert_eq!(
            json(&m),
            r#"{"group":"g1","seq":7,"sender":"bob","ts_ms":1700000000000,"text":"psst","private":true}"#
        );
    }

    #[test]
    fn hidden_placeholders_show_only_their_seq() {
        let m = message(Message::FLAG_HIDDEN, "", "");
        assert_eq!(message_line(&m), "[g1 #7] (hidden)");
        assert_eq!(
            json(&m),
            r#"{"group":"g1","seq":7,"sender":"","ts_ms":1700000000000,"text":"","hidden":true}"#
        );
    }

    #[test]
    fn send_takes_private_recipients() {
        let cli = Cli::try_parse_from(["chat", "send", "g1", "hi", "--to", "bob,carol"]).unwrap();
        let Command::Send { to, id, .. } = cli.command else {
            panic!("not send")
        };
        assert_eq!(to, ["bob", "carol"]);
        assert_eq!(id, None);
        let cli = Cli::try_parse_from(["chat", "send", "g1", "hi"]).unwrap();
        let Command::Send { to, .. } = cli.command else {
            panic!("not send")
        };
        assert!(to.is_empty());
        assert!(Cli::try_parse_from(["chat", "send", "g1", "hi", "--to", ""]).is_err());
        assert!(Cli::try_parse_from(["chat", "send", "g1", "hi", "--to", "bob,,carol"]).is_err());
    }

    #[test]
    fn delete_and_command_parse() {
        let cli = Cli::try_parse_from(["chat", "delete", "g1", "7", "--json"]).unwrap();
        assert!(cli.json);
        assert!(matches!(cli.command, Command::Delete { seq: 7, .. }));
        assert!(Cli::try_parse_from(["chat", "delete", "g1", "x"]).is_err());

        let cli = Cli::try_parse_from(["chat", "command", "g1", "delete", "7", "-3"]).unwrap();
        let Command::Plugin { group, name, args } = cli.command else {
            panic!("not command")
        };
        assert_eq!((group.as_str(), name.as_str()), ("g1", "delete"));
        assert_eq!(args, ["7", "-3"]);
        // Known options still count after the arguments.
        let cli = Cli::try_parse_from(["chat", "command", "g1", "ping", "a", "--json"]).unwrap();
        assert!(cli.json);
        assert!(matches!(cli.command, Command::Plugin { args, .. } if args == ["a"]));
        let cli =
            Cli::try_parse_from(["chat", "command", "g1", "ping", "--", "--json", "-x"]).unwrap();
        assert!(!cli.json);
        assert!(matches!(cli.command, Command::Plugin { args, .. } if args == ["--json", "-x"]));
        let cli = Cli::try_parse_from(["chat", "command", "g1", "ping"]).unwrap();
        assert!(matches!(cli.command, Command::Plugin { args, .. } if args.is_empty()));
    }
}
