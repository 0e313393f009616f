//! The admin HTTP API as an operator uses it (curl's requests, over TCP): health,
//! readiness, metrics, live plugin management, connection and group figures, drain.

use std::time::Duration;

use chat_gateway::plugins::Failure;
use chat_protocol::ErrorCode;
use chat_tests::{
    TestGateway, bundled_spec, http, metric, receive, test_plugin, test_plugin_spec, texts, users,
};

#[tokio::test]
async fn health_readiness_connections_and_groups_describe_the_gateway_but_never_bodies() {
    let gw = TestGateway::start().await;
    let admin = gw.admin();
    let health = http(admin, "GET", "/health", None, None).await;
    assert_eq!(
        (health.status, health.json()["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = http(admin, "GET", "/ready", None, None).await;
    assert_eq!(
        (ready.status, ready.json()["status"].as_str()),
        (200, Some("ready"))
    );

    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    let _bob_phone = gw.connect_device("bob", "phone").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();
    alice.send("g", "top secret body").await.unwrap();
    receive(&bob, 1).await;

    let connections = http(admin, "GET", "/connections", None, None).await.json();
    assert_eq!(connections["local"]["connections"], 3, "{connections}");
    assert_eq!(connections["local"]["users"], 2, "{connections}");
    assert_eq!(connections["draining"], false);

    let group = http(admin, "GET", "/groups/g", None, None).await;
    assert_eq!(group.status, 200, "{}", group.body);
    assert!(!group.body.contains("top secret"), "{}", group.body);
    let group = group.json();
    assert_eq!(group["head_seq"], 1);
    assert_eq!(group["owner"], "alice");
    assert_eq!(group["subscribed"], true);
    assert_eq!(
        group["local_members"],
        serde_json::json!([
            { "user": "alice", "connections": 1 },
            { "user": "bob", "connections": 2 },
        ])
    );
    let missing = http(admin, "GET", "/groups/nope", None, None).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    let unknown = http(admin, "GET", "/no-such-thing", None, None).await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"].is_string());
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move_with_traffic() {
    let gw = TestGateway::start_with(|c| c.unread.flush_ms = 100).await;
    let scrape = || async {
        let answer = http(gw.admin(), "GET", "/metrics", None, None).await;
        assert_eq!(answer.status, 200);
        answer.body
    };
    let before = scrape().await;
    assert_eq!(metric(&before, "chat_connections"), 0.0);
    assert!(
        before.contains("# TYPE chat_fan_out_seconds histogram"),
        "{before}"
    );

    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();
    for i in 0..20 {
        alice.send("g", format!("m{i}")).await.unwrap();
    }
    assert!(alice.send("nope", "x").await.is_err());
    receive(&bob, 20).await;
    receive(&alice, 20).await;
    let _ = gw.connect_with_token("forged").await;
    let counted = tokio::time::Instant::now() + chat_tests::PATIENCE;
    while gw.unread_counted() < 20 {
        assert!(
            tokio::time::Instant::now() < counted,
            "unread never flushed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acked = tokio::time::Instant::now() + chat_tests::PATIENCE;
    while gw.delivery_stats().acked < 40 {
        assert!(
            tokio::time::Instant::now() < acked,
            "ACKs never arrived: {:?}",
            gw.delivery_stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let after = scrape().await;
    let value = |series: &str| metric(&after, series);
    assert_eq!(value("chat_connections"), 2.0, "{after}");
    assert_eq!(value("chat_connections_opened_total"), 2.0);
    assert_eq!(
        value(r#"chat_connections_rejected_total{reason="invalid_token"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(r#"chat_requests_total{request="Send",outcome="ok"}"#),
        20.0
    );
    assert_eq!(
        value(r#"chat_requests_total{request="Send",outcome="not_member"}"#),
        1.0
    );
    // Both members get each message: alice's own devices are pushed her sends too.
    assert_eq!(value("chat_pushes_total"), 40.0, "{after}");
    assert_eq!(value("chat_pushes_acknowledged_total"), 40.0);
    assert!(value("chat_ack_frames_total") >= 1.0);
    assert!(value("chat_fan_out_seconds_count") >= 20.0, "{after}");
    assert!(value("chat_push_delay_seconds_count") >= 1.0);
    assert!(value(r#"chat_store_operation_seconds_count{op="append_batch"}"#) >= 1.0);
    assert_eq!(value("chat_unread_messages_counted_total"), 20.0);
    assert!(value("chat_unread_flushes_total") >= 1.0);
    // Bob gets 20 unread, alice none of her own: the +1s ride on few counter writes.
    assert_eq!(value("chat_unread_increments_total"), 20.0);
    assert!(value("chat_unread_counter_writes_total") <= value("chat_unread_flushes_total"));
    assert!(
        value(r#"chat_plugin_call_seconds_count{plugin="private-messages",hook="send"}"#) >= 20.0
    );
    assert_eq!(value(r#"chat_plugin_disabled{plugin="ack-batching"}"#), 0.0);
    assert_eq!(value("chat_local_groups"), 1.0);
    // The transport under it: 40 pushes of at least their bodies went out in datagrams,
    // never more send calls than datagrams (GSO sends several per call); ACKs came back.
    let sent = value("chat_quic_datagrams_sent_total");
    assert!(sent >= 1.0, "{after}");
    let calls = value("chat_quic_send_calls_total");
    assert!(calls >= 1.0 && calls <= sent, "{after}");
    assert!(value("chat_quic_bytes_sent_total") >= 40.0 * 2.0, "{after}");
    assert!(
        value("chat_quic_datagrams_received_total") >= 1.0,
        "{after}"
    );
    assert!(after.contains("\nchat_quic_packets_lost_total "), "{after}");

    drop(bob);
    let closed = tokio::time::Instant::now() + chat_tests::PATIENCE;
    while metric(
        &scrape().await,
        r#"chat_connections_closed_total{reason="client_closed"}"#,
    ) < 1.0
    {
        assert!(tokio::time::Instant::now() < closed, "close never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A closed connection's transport counts stay in the totals.
    assert!(metric(&scrape().await, "chat_quic_datagrams_sent_total") >= sent);
}

/// Load, reorder, reload and remove plugins on the admin API while a sender keeps sending:
/// the connections stay, no accepted message is lost or repeated, and a file that is not a
/// plugin is refused with the reason while the running chain stays as it was.
#[tokio::test]
async fn plugins_change_live_under_traffic_and_a_bad_one_is_refused() {
    let gw = TestGateway::start_with(|c| {
        c.plugins = Some(vec![test_plugin_spec("no-stars", Failure::FailClosed)])
    })
    .await;
    let admin = gw.admin();
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();

    // Live traffic through every change: alice sends "n<i>" as fast as answers come.
    let sender = tokio::spawn(async move {
        let mut sent = Vec::new();
        for i in 0..300 {
            let text = format!("n{i}");
            if alice.send("g", text.clone()).await.is_ok() {
                sent.push(text);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (alice, sent)
    });

    let mask = bundled_spec("word-filter", "words = [\"darn\"]\nmode = \"mask\"");
    let body = serde_json::to_string(&mask).unwrap();
    let loaded = http(admin, "POST", "/plugins?position=0", None, Some(&body)).await;
    assert_eq!(loaded.status, 201, "{}", loaded.body);
    assert_eq!(loaded.json()["name"], "word-filter");
    let names = |list: serde_json::Value| -> Vec<String> {
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let list = http(admin, "GET", "/plugins", None, None).await.json();
    assert_eq!(names(list.clone()), ["word-filter", "no-stars"]);
    assert_eq!(list["plugins"][1]["failure"], "fail-closed");
    assert_eq!(list["plugins"][1]["state"], "active");
    assert_eq!(list["plugins"][0]["hooks"], serde_json::json!(["send"]));

    // Not a plugin: refused with the reason, the chain unchanged.
    let broken = serde_json::json!({ "path": test_plugin("wrong-world") }).to_string();
    let refused = http(admin, "POST", "/plugins", None, Some(&broken)).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("not a chat:gateway@0.1.0 plugin"),
        "{}",
        refused.body
    );
    let list = http(admin, "GET", "/plugins", None, None).await.json();
    assert_eq!(names(list), ["word-filter", "no-stars"]);

    let reordered = http(
        admin,
        "PUT",
        "/plugins/order",
        None,
        Some(r#"["no-stars", "word-filter"]"#),
    )
    .await;
    assert_eq!(reordered.status, 200, "{}", reordered.body);
    assert_eq!(names(reordered.json()), ["no-stars", "word-filter"]);
    let partial = http(
        admin,
        "PUT",
        "/plugins/order",
        None,
        Some(r#"["no-stars"]"#),
    )
    .await;
    assert_eq!(partial.status, 422, "{}", partial.body);

    let reloaded = http(admin, "POST", "/plugins/no-stars/reload", None, None).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    let missing = http(admin, "POST", "/plugins/nope/reload", None, None).await;
    assert_eq!(missing.status, 404, "{}", missing.body);

    let (alice, sent) = sender.await.unwrap();
    // The order now: stars refused first, then the word masked.
    alice.send("g", "darn it").await.unwrap();
    let removed = http(admin, "DELETE", "/plugins/word-filter", None, None).await;
    assert_eq!(removed.status, 204, "{}", removed.body);
    alice.send("g", "darn again").await.unwrap();
    let err = alice.send("g", "no *stars*").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::REJECTED), "no-stars still runs");

    assert_eq!(
        sent.len(),
        300,
        "every send accepted: none of them has stars"
    );
    let mut expected = sent;
    expected.extend(["**** it".to_owned(), "darn again".to_owned()]);
    let got = texts(&receive(&bob, expected.len()).await);
    assert_eq!(
        got, expected,
        "every message once, in order, on the same connection"
    );
    assert_eq!(gw.local_counts().0, 2, "no connection dropped");
}

#[tokio::test]
async fn a_token_guards_everything_but_health_and_readiness() {
    let gw = TestGateway::start_with(|c| c.admin.token = Some("admin-secret".into())).await;
    let admin = gw.admin();
    assert_eq!(http(admin, "GET", "/health", None, None).await.status, 200);
    assert_eq!(http(admin, "GET", "/ready", None, None).await.status, 200);
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/plugins"),
        ("GET", "/connections"),
        ("POST", "/drain"),
        ("DELETE", "/plugins/ack-batching"),
    ] {
        let none = http(admin, method, path, None, None).await;
        assert_eq!(none.status, 401, "{method} {path}: {}", none.body);
        let wrong = http(admin, method, path, Some("admin-secreT"), None).await;
        assert_eq!(wrong.status, 401, "{method} {path}");
    }
    assert_eq!(gw.plugin_stats().len(), 3, "nothing was removed");
    let metrics = http(admin, "GET", "/metrics", Some("admin-secret"), None).await;
    assert_eq!(metrics.status, 200);

    // Off loopback without a token, the gateway does not start.
    let open = chat_gateway::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: tempfile::tempdir().unwrap().keep(),
        admin: chat_gateway::config::AdminConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            ..Default::default()
        },
        ..Default::default()
    };
    let Err(error) = chat_gateway::Gateway::start(open).await else {
        panic!("an open admin API without a token started");
    };
    assert!(error.to_string().contains("admin.token"), "{error}");
}

#[tokio::test]
async fn drain_on_the_admin_api_moves_clients_and_reports_draining() {
    let gw = TestGateway::start().await;
    let admin = gw.admin();
    let mut options = gw.options("alice", "phone");
    options.reconnect = true;
    let alice = chat_client::Client::connect(options).await.unwrap();
    alice.create_group("g", &[]).await.unwrap();

    let answer = http(admin, "POST", "/drain", None, Some(r#"{"deadline_s": 10}"#)).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.json()["deadline_s"], 10);
    assert_eq!(answer.json()["connections"], 1);
    let left = tokio::time::timeout(Duration::from_secs(10), gw.drained())
        .await
        .expect("drained before the deadline");
    assert_eq!(left, 0, "the client moved by itself");
    let ready = http(admin, "GET", "/ready", None, None).await;
    assert_eq!(
        (ready.status, ready.json()["status"].as_str()),
        (503, Some("draining"))
    );
    let again = http(admin, "POST", "/drain", None, None).await;
    assert_eq!(again.json()["already"], true);
}
