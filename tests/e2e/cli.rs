//! The binaries as a user runs them: `chat-gateway serve`, `chat-gateway token`, `chat ...`.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chat_tests::binary;
use serde_json::Value;

/// A `chat-gateway serve` process, killed when dropped.
struct Served {
    child: Child,
    data: tempfile::TempDir,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start() -> Self {
        Self::start_with_config(None)
    }

    /// `chat-gateway serve`, with `--config FILE` when `config` (TOML) is given.
    fn start_with_config(config: Option<&str>) -> Self {
        let data = tempfile::tempdir().unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if let Some(config) = config {
            std::fs::write(data.path().join("gateway.toml"), config).unwrap();
        }
        let addr = format!("127.0.0.1:{port}");
        let child = serve(data.path(), &addr);
        let served = Served { child, data, addr };
        served.wait_until_up();
        served
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.chat("alice", &["conversations"]).status.success() {
            assert!(Instant::now() < deadline, "the gateway did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A rolling restart: SIGTERM (the gateway drains: its clients are told to move),
    /// then the same command on the same port and data.
    fn restart(&mut self) {
        signal(&self.child, "-TERM");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "SIGTERM exits 0, not {status}");
        self.child = serve(self.data.path(), &self.addr);
        self.wait_until_up();
    }

    /// Rewrites the config file and sends SIGHUP.
    fn reload(&self, config: &str) {
        std::fs::write(self.data.path().join("gateway.toml"), config).unwrap();
        signal(&self.child, "-HUP");
    }

    fn token(&self, user: &str) -> String {
        let out = Command::new(binary("chat-gateway"))
            .args(["token", "--user", user, "--data"])
            .arg(self.data.path())
            .env_remove("CHAT_TOKEN_SECRET")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn command(&self, user: &str, args: &[&str]) -> Command {
        let mut command = Command::new(binary("chat"));
        command
            .args(args)
            .env("CHAT_SERVER", &self.addr)
            .env("CHAT_CA", self.data.path().join("tls/cert.pem"))
            .env("CHAT_TOKEN", self.token(user))
            .env("CHAT_DEVICE", "cli");
        command
    }

    fn chat(&self, user: &str, args: &[&str]) -> Output {
        self.command(user, args).output().unwrap()
    }

    /// Runs `chat`, requiring success, and returns stdout.
    fn ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.chat(user, args);
        assert!(
            out.status.success(),
            "chat {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// `chat-gateway serve` on `addr` and `data`, with `data/gateway.toml` if it exists.
fn serve(data: &Path, addr: &str) -> Child {
    let mut command = Command::new(binary("chat-gateway"));
    command
        .args([
            "serve",
            "--admin",
            "127.0.0.1:0",
            "--listen",
            addr,
            "--data",
        ])
        .arg(data);
    let config = data.join("gateway.toml");
    if config.exists() {
        command.arg("--config").arg(config);
    }
    command
        .env_remove("CHAT_TOKEN_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn two_cli_users_talk_in_a_group() {
    let gw = Served::start();
    gw.ok("alice", &["group", "create", "team", "--members", "bob"]);
    gw.ok("alice", &["group", "add", "team", "carol"]);
    assert_eq!(gw.ok("alice", &["send", "team", "hello team"]).trim(), "1");

    let listener = gw
        .command(
            "bob",
            &["--json", "listen", "--count", "2", "--timeout", "20"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        gw.ok("carol", &["send", "team", "hi from carol"]).trim(),
        "2"
    );
    let out = listener.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushes = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(pushes.len(), 2);
    assert_eq!(pushes[0]["group"], "team");
    assert_eq!(pushes[0]["seq"], 1);
    assert_eq!(pushes[0]["sender"], "alice");
    assert_eq!(pushes[0]["text"], "hello team");
    assert!(pushes[0].get("private").is_none() && pushes[0].get("hidden").is_none());
    assert!(pushes[0]["ts_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(pushes[1]["text"], "hi from carol");

    // bob acknowledged both: listening again shows nothing new.
    let again = gw.ok("bob", &["--json", "listen", "--timeout", "1"]);
    assert_eq!(again, "", "acknowledged pushes came again");

    let history = json_lines(&gw.ok("bob", &["--json", "history", "team", "--after", "0"]));
    assert_eq!(
        history
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let members = json_lines(&gw.ok("bob", &["--json", "group", "members", "team"]));
    assert_eq!(members.len(), 3);
    assert_eq!(members[0]["user"], "alice");
    assert_eq!(members[0]["role"], "owner");
    let conversations = json_lines(&gw.ok("carol", &["--json", "conversations"]));
    assert_eq!(conversations[0]["group"], "team");
    assert_eq!(conversations[0]["head_seq"], 2);
}

#[test]
fn cli_errors_go_to_stderr_with_a_nonzero_exit() {
    let gw = Served::start();
    gw.ok("alice", &["group", "create", "private"]);
    let out = gw.chat("eve", &["send", "private", "let me in"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not_member"), "{stderr}");

    let out = gw
        .command("alice", &["conversations"])
        .env("CHAT_TOKEN", "forged.token.value")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_token"));

    let out = gw
        .command("alice", &["conversations"])
        .env_remove("CHAT_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing_token"));
}

#[test]
fn plugin_check_describes_good_components_and_explains_bad_ones() {
    let check = |file: &Path| {
        Command::new(binary("chat-gateway"))
            .args(["plugin", "check"])
            .arg(file)
            .output()
            .unwrap()
    };

    let good = check(&chat_tests::test_plugin("accepts-all"));
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(stdout.contains("accepts-all 0.1.0"), "{stdout}");
    assert!(stdout.contains("chat:gateway@0.1.0"), "{stdout}");
    assert!(stdout.contains("hooks:    send, read"), "{stdout}");

    let wrong = check(&chat_tests::test_plugin("wrong-world"));
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("not a chat:gateway@0.1.0 plugin"),
        "{stderr}"
    );

    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), b"definitely not wasm").unwrap();
    let bad = check(garbage.path());
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a WebAssembly file"));
}

#[test]
fn cli_private_sends_and_delete_for_me() {
    let gw = Served::start();
    gw.ok("alice", &["group", "create", "g", "--members", "bob,carol"]);
    assert_eq!(
        gw.ok("alice", &["send", "g", "for bob", "--to", "bob"])
            .trim(),
        "1"
    );
    gw.ok("alice", &["send", "g", "for all"]);

    let carol = json_lines(&gw.ok("carol", &["--json", "history", "g"]));
    assert_eq!(carol[0]["hidden"], true);
    assert_eq!(carol[0]["text"], "");
    assert_eq!(carol[1]["text"], "for all");
    let bob = json_lines(&gw.ok("bob", &["--json", "history", "g"]));
    assert_eq!(
        (bob[0]["text"].as_str(), bob[0]["private"].as_bool()),
        (Some("for bob"), Some(true))
    );

    assert_eq!(
        gw.ok("bob", &["delete", "g", "2"]).trim(),
        "deleted 2 for you"
    );
    let bob = json_lines(&gw.ok("bob", &["--json", "history", "g"]));
    assert_eq!(bob[1]["hidden"], true);
    let alice = json_lines(&gw.ok("alice", &["--json", "history", "g"]));
    assert_eq!(alice[1]["text"], "for all");
}

#[test]
fn sighup_reloads_the_plugin_chain_and_keeps_connections() {
    let mask = "[[plugins]]\npath = \"bundled:word-filter\"\nconfig = { words = [\"darn\"] }\n";
    let gw = Served::start_with_config(Some(mask));
    gw.ok("alice", &["group", "create", "g", "--members", "bob"]);
    gw.ok("alice", &["group", "create", "probe"]);
    let listener = gw
        .command(
            "bob",
            &["--json", "listen", "--count", "2", "--timeout", "30"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    gw.ok("alice", &["send", "g", "darn it"]);

    gw.reload(&mask.replace(
        "config = { words = [\"darn\"] }",
        "config = { words = [\"darn\"], mode = \"reject\" }",
    ));
    // Probe in a group nobody listens to until the new chain answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = gw.chat("alice", &["send", "probe", "darn"]);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("rejected"), "{stderr}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reloaded chain never took effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A broken config is refused and the running chain stays.
    gw.reload("[[plugins]]\npath = \"/nonexistent.wasm\"\n");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !gw.chat("alice", &["send", "g", "darn"]).status.success(),
        "still rejecting"
    );
    gw.ok("alice", &["send", "g", "fine words"]);

    let out = listener.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the listening connection survived: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushes = json_lines(&String::from_utf8(out.stdout).unwrap());
    let texts: Vec<&str> = pushes.iter().filter_map(|p| p["text"].as_str()).collect();
    assert_eq!(texts, ["**** it", "fine words"]);
}

#[test]
fn chat_listen_rides_out_a_gateway_restart_without_loss_or_repeats() {
    let mut gw = Served::start();
    gw.ok("alice", &["group", "create", "team", "--members", "bob"]);
    let listener = gw
        .command(
            "bob",
            &["--json", "listen", "--count", "3", "--timeout", "30"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    gw.ok("alice", &["send", "team", "before"]);
    std::thread::sleep(Duration::from_millis(300));

    gw.restart();
    gw.ok("alice", &["send", "team", "after 1"]);
    gw.ok("alice", &["send", "team", "after 2"]);

    let out = listener.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushes = json_lines(&String::from_utf8(out.stdout).unwrap());
    let texts: Vec<&str> = pushes.iter().map(|p| p["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["before", "after 1", "after 2"]);
}

#[test]
fn cli_unread_counts_and_marking_read() {
    let gw = Served::start();
    gw.ok("alice", &["group", "create", "team", "--members", "bob"]);
    gw.ok("alice", &["group", "create", "ops", "--members", "bob"]);
    gw.ok("alice", &["send", "team", "one"]);
    gw.ok("alice", &["send", "team", "two"]);
    gw.ok("alice", &["send", "ops", "three"]);

    // Counts are written about once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let expected: Value = serde_json::json!({"total": 3, "groups": {"ops": 1, "team": 2}});
    loop {
        let got: Value = serde_json::from_str(&gw.ok("bob", &["--json", "unread"])).unwrap();
        if got == expected {
            break;
        }
        assert!(Instant::now() < deadline, "unread stayed at {got}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(gw.ok("bob", &["unread"]), "total 3\nops 1\nteam 2\n");

    gw.ok("bob", &["read", "team", "1"]);
    assert_eq!(gw.ok("bob", &["unread"]), "total 2\nops 1\nteam 1\n");
    gw.ok("bob", &["read", "ops", "99"]);
    let got: Value = serde_json::from_str(&gw.ok("bob", &["--json", "unread"])).unwrap();
    assert_eq!(got, serde_json::json!({"total": 1, "groups": {"team": 1}}));

    let out = gw.chat("bob", &["read", "nope", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_member"));
}

/// `chat-gateway` with `args`, no token secret from the environment.
fn gateway_command(args: &[&str]) -> Output {
    Command::new(binary("chat-gateway"))
        .args(args)
        .env_remove("CHAT_TOKEN_SECRET")
        .env_remove("CHAT_ADMIN_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn config_check_passes_a_good_file_and_lists_every_problem_of_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"0.0.0.0:4433\"\n[delivery]\nwindow = 64\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    let out = gateway_command(&["config", "check", good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("good.toml: ok\n"));

    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "listen = \"127.0.0.1:4433\"\n\
         lisen = \"127.0.0.1:4433\"\n\
         [delivery]\n\
         ack_delay_ms = 50\n\
         retransmit_ms = 10\n\
         window = -1\n\
         [admin]\n\
         listen = \"0.0.0.0:9464\"\n",
    )
    .unwrap();
    let out = gateway_command(&["config", "check", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "one line per problem: {stdout}");
    for (line, (number, key)) in lines.iter().zip([
        (2, "lisen"),
        (6, "delivery.window"),
        (5, "delivery.retransmit_ms"),
        (8, "admin.listen"),
    ]) {
        assert!(
            line.contains(&format!("line {number}: {key}: ")),
            "expected line {number} {key} in {line:?}"
        );
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("4 problem(s)"));
}

#[test]
fn print_config_shows_the_effective_config_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        "redis = \"redis://app:hunter2@10.0.0.5:6379\"\n\
         [auth]\ntoken_secret = \"very-secret\"\n\
         [admin]\nlisten = \"0.0.0.0:9464\"\ntoken = \"admin-secret\"\n\
         [delivery]\nwindow = 64\n",
    )
    .unwrap();
    let out = gateway_command(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:5555",
        "--print-config",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in ["hunter2", "very-secret", "admin-secret"] {
        assert!(!text.contains(secret), "{secret} shown:\n{text}");
    }
    let printed: toml::Table = toml::from_str(&text).expect("printed config is TOML");
    assert_eq!(
        printed["listen"].as_str(),
        Some("127.0.0.1:5555"),
        "flags win"
    );
    assert_eq!(
        printed["redis"].as_str(),
        Some("redis://app:********@10.0.0.5:6379")
    );
    assert_eq!(printed["delivery"]["window"].as_integer(), Some(64));
    assert_eq!(
        printed["delivery"]["queue"].as_integer(),
        Some(1024),
        "defaults shown"
    );
    assert_eq!(printed["auth"]["token_secret"].as_str(), Some("********"));
    assert_eq!(printed["plugins"].as_array().map(Vec::len), Some(3));
    // What it prints, it loads again.
    std::fs::write(&file, &text).unwrap();
    let out = gateway_command(&["config", "check", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let config = "[log]\nformat = \"json\"\nlevel = \"info\"\n";
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("gateway.toml"), config).unwrap();
    let mut child = Command::new(binary("chat-gateway"))
        .args([
            "serve",
            "--admin",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data.path())
        .arg("--config")
        .arg(data.path().join("gateway.toml"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let lines = json_lines(&stderr);
    assert!(lines.len() >= 3, "{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l["message"].as_str() == Some("drained") && l["level"] == "INFO"),
        "{stderr}"
    );
}

#[test]
fn a_drain_on_the_admin_api_ends_the_process_with_exit_0() {
    let data = tempfile::tempdir().unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(binary("chat-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin"])
        .arg(admin.to_string())
        .arg("--data")
        .arg(data.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(admin) {
            use std::io::{Read, Write};
            stream
                .write_all(b"POST /drain HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            break answer;
        }
        assert!(Instant::now() < deadline, "the admin API did not come up");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after the drain");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
}

#[test]
fn chat_listen_with_focus_prints_activity_for_background_groups() {
    let gw = Served::start();
    gw.ok("alice", &["group", "create", "team", "--members", "bob"]);
    gw.ok("alice", &["group", "create", "news", "--members", "bob"]);
    let listener = gw
        .command(
            "bob",
            &[
                "--json",
                "listen",
                "--focus",
                "team",
                "--count",
                "1",
                "--timeout",
                "20",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    gw.ok("alice", &["send", "news", "one"]);
    gw.ok("alice", &["send", "news", "two"]);
    // Reported at once, then at most once a second (`delivery.activity_ms`).
    std::thread::sleep(Duration::from_millis(2500));
    gw.ok("alice", &["send", "team", "for bob"]);
    let out = listener.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let pushes = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(pushes.len(), 1, "only the focused group is pushed");
    assert_eq!(
        (pushes[0]["group"].as_str(), pushes[0]["text"].as_str()),
        (Some("team"), Some("for bob"))
    );
    assert!(
        stderr.contains("activity news: up to seq 2, 2 not pushed"),
        "{stderr}"
    );
}
