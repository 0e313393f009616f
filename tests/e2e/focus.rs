//! Foreground and background groups: the app names the groups it shows (`Focus`); the
//! others get compact `Activity` notices instead of pushes, and their messages arrive
//! from the log when they come back.

use std::time::Duration;

use chat_client::{Client, GroupActivity, Message};
use chat_gateway::config::Background;
use chat_tests::*;

/// Activity notices until one reports `seq` in `group`; fails the test if none does in time.
async fn activity_until(client: &Client, group: &str, seq: u64) -> Vec<GroupActivity> {
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|a: &GroupActivity| a.group == group && a.seq == seq)
    {
        match client.next_activity(PATIENCE).await {
            Some(groups) => seen.extend(groups),
            None => panic!("no Activity reporting {group} seq {seq}; got {seen:?}"),
        }
    }
    seen
}

async fn send_n(client: &Client, group: &str, n: usize) {
    for i in 0..n {
        client.send(group, format!("{group}-{i}")).await.unwrap();
    }
}

fn fast_activity() -> impl FnOnce(&mut chat_gateway::Config) {
    |config| config.delivery.activity_ms = 100
}

#[tokio::test]
async fn a_background_group_gets_activity_instead_of_pushes_and_its_messages_when_it_comes_back() {
    let gw = TestGateway::start_with(fast_activity()).await;
    let alice = gw.connect("alice").await;
    alice.create_group("chat", &users(&["bob"])).await.unwrap();
    alice.create_group("news", &users(&["bob"])).await.unwrap();
    let bob = gw.connect("bob").await;
    bob.focus(&users(&["chat"])).await.unwrap();

    send_n(&alice, "news", 5).await;
    send_n(&alice, "chat", 1).await;
    let pushed = receive(&bob, 1).await;
    assert_eq!(
        (pushed[0].group.as_str(), pushed[0].seq),
        ("chat", 1),
        "only the foreground group is pushed"
    );
    let seen = activity_until(&bob, "news", 5).await;
    assert!(seen.iter().all(|a| a.group == "news"), "{seen:?}");
    let last = seen.last().unwrap();
    assert_eq!(
        (last.seq, last.pending),
        (5, 5),
        "nothing of news was pushed"
    );
    assert_quiet(&bob, Duration::from_millis(300)).await;

    // Back in the foreground: what it missed comes from the log, in order, then live.
    bob.focus(&users(&["chat", "news"])).await.unwrap();
    let caught_up = receive(&bob, 5).await;
    assert_eq!(seqs(&caught_up), [1, 2, 3, 4, 5]);
    assert!(caught_up.iter().all(|m| m.group == "news"));
    assert!(
        caught_up
            .iter()
            .all(|m| m.flags & Message::FLAG_CATCH_UP != 0)
    );
    send_n(&alice, "news", 1).await;
    let live = receive(&bob, 1).await;
    assert_eq!(
        (live[0].seq, live[0].flags & Message::FLAG_CATCH_UP),
        (6, 0)
    );
    assert!(
        bob.next_activity(Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_group_joined_while_focused_elsewhere_starts_in_the_background() {
    let gw = TestGateway::start_with(fast_activity()).await;
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    bob.focus(&[]).await.unwrap();
    alice.create_group("later", &users(&["bob"])).await.unwrap();
    send_n(&alice, "later", 3).await;
    let seen = activity_until(&bob, "later", 3).await;
    assert_eq!(seen.last().unwrap().pending, 3);
    assert_quiet(&bob, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_group_far_behind_in_the_background_skips_to_its_newest_when_it_comes_back() {
    let gw = TestGateway::start_with(|config| {
        config.delivery.activity_ms = 100;
        config.offline.max_catch_up = 10;
    })
    .await;
    let alice = gw.connect("alice").await;
    alice.create_group("busy", &users(&["bob"])).await.unwrap();
    let bob = gw.connect("bob").await;
    bob.focus(&[]).await.unwrap();
    send_n(&alice, "busy", 30).await;
    activity_until(&bob, "busy", 30).await;

    bob.focus(&users(&["busy"])).await.unwrap();
    assert_eq!(
        seqs(&receive(&bob, 10).await),
        (21..=30).collect::<Vec<_>>()
    );
    let skipped = bob.next_skipped(PATIENCE).await.expect("a Skipped notice");
    assert_eq!((skipped.first, skipped.last), (1, 20));
    assert_quiet(&bob, Duration::from_millis(300)).await;

    // The cursor moved past the skipped range: a new device of bob's starts after it too.
    bob.close().await;
    let bob = gw.connect("bob").await;
    assert_quiet(&bob, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_deployment_that_pushes_in_full_accepts_focus_and_pushes_everything() {
    let gw = TestGateway::start_with(|config| {
        config.delivery.activity_ms = 100;
        config.delivery.background = Background::Full;
    })
    .await;
    let alice = gw.connect("alice").await;
    alice.create_group("news", &users(&["bob"])).await.unwrap();
    let bob = gw.connect("bob").await;
    bob.focus(&[]).await.unwrap();
    send_n(&alice, "news", 3).await;
    assert_eq!(seqs(&receive(&bob, 3).await), [1, 2, 3]);
    assert!(
        bob.next_activity(Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn the_client_sends_its_focus_again_after_a_reconnect() {
    let mut gw = TestGateway::start_with(fast_activity()).await;
    let alice = gw.connect("alice").await;
    alice.create_group("news", &users(&["bob"])).await.unwrap();
    let mut options = gw.options("bob", "phone");
    options.reconnect = true;
    let bob = Client::connect(options).await.unwrap();
    bob.focus(&[]).await.unwrap();

    gw.restart().await;
    let alice = gw.connect("alice").await;
    // Until bob is back, his messages wait in the log; once back, only Activity comes.
    tokio::time::timeout(PATIENCE, async {
        while gw.local_counts().0 < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("bob reconnected");
    tokio::time::sleep(Duration::from_millis(200)).await;
    send_n(&alice, "news", 2).await;
    activity_until(&bob, "news", 2).await;
    assert_quiet(&bob, Duration::from_millis(300)).await;
}
