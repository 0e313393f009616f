//! Unread counts: the visibility rules, read markers, coalesced pushes, and exactness
//! when staged increments are lost or raced.

use std::collections::BTreeMap;
use std::time::Duration;

use chat_client::{Client, ConnectOptions, HistoryPage};
use chat_gateway::Config;
use chat_tests::*;

/// Flush staged counts every 50 ms, so tests need not wait a second.
fn quick(c: &mut Config) {
    c.unread.flush_ms = 50;
}

/// Group → count, as the gateway reports it.
async fn counts(client: &Client) -> (u64, BTreeMap<String, u64>) {
    let unread = client.unread().await.unwrap();
    let groups = unread
        .groups
        .into_iter()
        .map(|g| (g.group, g.count))
        .collect();
    (unread.total, groups)
}

/// Waits until `client`'s counts are `expected` (flushes are asynchronous); groups
/// with no unread message are not listed.
async fn assert_counts(client: &Client, expected: &[(&str, u64)]) {
    let expected: BTreeMap<String, u64> = expected
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(g, n)| (g.to_string(), *n))
        .collect();
    let total: u64 = expected.values().sum();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = counts(client).await;
        if got == (total, expected.clone()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: counts {got:?}, expected {expected:?}",
            client.user()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn counts_follow_the_same_visibility_rules_as_history() {
    let gw = TestGateway::start_with(quick).await;
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    let carol = gw.connect("carol").await;
    alice
        .create_group("g", &users(&["bob", "carol"]))
        .await
        .unwrap();
    for text in ["a1", "a2", "a3"] {
        alice.send("g", text).await.unwrap(); // seqs 1-3
    }
    bob.send("g", "b4").await.unwrap(); // 4: not counted for bob
    alice
        .send_private("g", &users(&["carol"]), "whisper") // 5: for carol only
        .await
        .unwrap();
    alice.add_members("g", &users(&["dave"])).await.unwrap(); // dave joins at 5
    alice.send("g", "a6").await.unwrap();
    let dave = gw.connect("dave").await;

    assert_counts(&alice, &[("g", 1)]).await;
    assert_counts(&bob, &[("g", 4)]).await;
    assert_counts(&carol, &[("g", 6)]).await;
    assert_counts(&dave, &[("g", 1)]).await;

    // Deleted for bob: no longer unread for him, still for carol.
    bob.delete_for_me("g", 1).await.unwrap();
    assert_counts(&bob, &[("g", 3)]).await;
    assert_counts(&carol, &[("g", 6)]).await;

    // Read up to 3: only 6 is left for bob (4 is his, 5 is carol's).
    bob.mark_read("g", 3).await.unwrap();
    assert_counts(&bob, &[("g", 1)]).await;
    // Marking back to 0 counts 2, 3 and 6 again (1 stays deleted).
    bob.mark_read("g", 0).await.unwrap();
    assert_counts(&bob, &[("g", 3)]).await;

    // The total spans groups; reading past the head reads everything.
    alice.create_group("h", &users(&["bob"])).await.unwrap();
    alice.send("h", "h1").await.unwrap();
    alice.send("h", "h2").await.unwrap();
    assert_counts(&bob, &[("g", 3), ("h", 2)]).await;
    bob.mark_read("h", u64::MAX).await.unwrap();
    assert_counts(&bob, &[("g", 3), ("h", 0)]).await;

    let err = bob.mark_read("nope", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(chat_client::ErrorCode::NOT_MEMBER));
}

#[tokio::test]
async fn connected_devices_hear_of_count_changes_once_per_flush_not_per_message() {
    // The default flush interval: one second.
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();
    let bob_phone = gw.connect_device("bob", "phone").await;
    let bob_laptop = gw.connect_device("bob", "laptop").await;

    for i in 0..30 {
        alice.send("g", format!("m{i}")).await.unwrap();
    }
    let mut changes = Vec::new();
    while changes.last() != Some(&30) {
        let change = bob_phone
            .next_unread_change(PATIENCE)
            .await
            .expect("an unread change");
        assert_eq!(change.len(), 1);
        assert_eq!(change[0].group, "g");
        changes.push(change[0].count);
    }
    assert!(
        changes.len() <= 3,
        "30 messages, {} count pushes: {changes:?}",
        changes.len()
    );

    // Reading on the laptop zeroes the count on the phone too.
    bob_laptop.mark_read("g", 30).await.unwrap();
    let mut last = None;
    while last != Some(0) {
        let change = bob_phone.next_unread_change(PATIENCE).await.expect("zero");
        last = change.last().map(|c| c.count);
    }
}

/// The truth, from history: messages after `read` that `client` may see and did not send.
async fn true_count(client: &Client, group: &str) -> u64 {
    client
        .history(group, HistoryPage::After(0), 500)
        .await
        .unwrap()
        .iter()
        .filter(|m| !m.is_hidden() && m.sender != client.user())
        .count() as u64
}

#[tokio::test]
async fn a_gateway_killed_with_staged_counts_loses_none_and_racing_flushes_double_none() {
    let redis = RedisServer::start().await;
    let on_redis = |c: &mut Config| {
        c.redis = Some(redis.url.clone());
        quick(c);
    };
    let first = TestGateway::start_with(on_redis).await;
    let tls = first.tls();
    let second = TestGateway::start_with(|c| {
        on_redis(c);
        c.tls = tls.clone();
    })
    .await;
    // Nothing the doomed gateway stages is flushed before it dies.
    let config = format!(
        "redis = \"{}\"\nplugins = []\n[unread]\nflush_ms = 600000\nflush_at = 100000\n[tls]\ncert = {:?}\nkey = {:?}",
        redis.url,
        tls.cert.unwrap(),
        tls.key.unwrap()
    );
    let mut doomed = GatewayProcess::start(&config, first.cert()).await;
    let alice_doomed = Client::connect(ConnectOptions {
        server: doomed.addr,
        ..first.options("alice", "doomed")
    })
    .await
    .unwrap();
    alice_doomed
        .create_group("g", &users(&["bob", "carol"]))
        .await
        .unwrap();
    for i in 0..40 {
        alice_doomed.send("g", format!("d{i}")).await.unwrap();
    }
    doomed.kill();

    // Looking at the counts gets the lost range counted from the log.
    let carol = first.connect("carol").await;
    assert_counts(&carol, &[("g", 40)]).await;

    // Two gateways send into the group at once: each stages its own messages and each
    // flush also counts the other's from the log — every message exactly once.
    let alice = first.connect("alice").await;
    let bob = second.connect("bob").await;
    tokio::join!(
        async {
            for i in 0..40 {
                alice.send("g", format!("a{i}")).await.unwrap();
            }
        },
        async {
            for i in 0..40 {
                bob.send("g", format!("b{i}")).await.unwrap();
            }
        }
    );
    assert_counts(&carol, &[("g", 120)]).await;
    assert_eq!(true_count(&bob, "g").await, 80);
    assert_counts(&bob, &[("g", 80)]).await;
    assert_counts(&alice, &[("g", true_count(&alice, "g").await)]).await;
}

#[tokio::test]
async fn one_gateway_merges_each_groups_counts_whoever_sends() {
    let redis = RedisServer::start().await;
    let mut gws = Vec::new();
    for _ in 0..3 {
        gws.push(
            TestGateway::start_with(|c| {
                c.redis = Some(redis.url.clone());
                quick(c);
            })
            .await,
        );
    }
    // Registrations are renewed every second: let every gateway see the others.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let alice = gws[0].connect("alice").await;
    alice
        .create_group("g", &users(&["bob", "carol"]))
        .await
        .unwrap();
    let bob = gws[1].connect("bob").await;
    let carol = gws[2].connect("carol").await;
    for i in 0..10 {
        for sender in [&alice, &bob, &carol] {
            sender
                .send("g", format!("{}-{i}", sender.user()))
                .await
                .unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let flushing: Vec<u64> = gws.iter().map(|g| g.unread_flushes()).collect();
    assert_eq!(
        flushing.iter().filter(|f| **f > 0).count(),
        1,
        "exactly one gateway writes g's counts: {flushing:?}"
    );
    for client in [&alice, &bob, &carol] {
        assert_counts(client, &[("g", 20)]).await;
    }
}
