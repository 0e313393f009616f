//! The offline buffer: a reconnecting device learns which groups have news from one read
//! of its user's buffer, and when that buffer overflowed or the device is far behind, it
//! still ends with every message exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use chat_client::{Client, HistoryPage, Skipped};
use chat_tests::*;

/// Waits until this gateway has counted `n` messages (the buffer is written by the same flush).
async fn counted(gw: &TestGateway, n: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while gw.unread_counted() < n {
        assert!(tokio::time::Instant::now() < deadline, "not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send_n(client: &Client, group: &str, n: usize) {
    for i in 0..n {
        client.send(group, format!("{group}-{i}")).await.unwrap();
    }
}

/// Group → seqs, in the order received.
fn by_group(messages: &[chat_client::Message]) -> BTreeMap<String, Vec<u64>> {
    let mut groups: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in messages {
        groups.entry(m.group.clone()).or_default().push(m.seq);
    }
    groups
}

#[tokio::test]
async fn an_overflowed_buffer_and_a_skip_still_deliver_every_message_once() {
    let gw = TestGateway::start_with(|c| {
        c.unread.flush_ms = 50;
        c.offline.capacity = 2;
        c.offline.max_catch_up = 5;
    })
    .await;
    let alice = gw.connect("alice").await;
    for group in ["g1", "g2", "g3"] {
        alice.create_group(group, &users(&["bob"])).await.unwrap();
    }

    // Within capacity: the buffer names g1, and the phone gets its three messages.
    send_n(&alice, "g1", 3).await;
    counted(&gw, 3).await;
    let bob = gw.connect_device("bob", "phone").await;
    let first = receive(&bob, 3).await;
    assert_eq!(
        by_group(&first),
        BTreeMap::from([("g1".into(), vec![1, 2, 3])])
    );
    assert_quiet(&bob, Duration::from_millis(300)).await;
    bob.close().await;

    // Three groups get messages for a buffer of two: g2 is evicted. And g1 gets 12 more,
    // past the 5 a reconnect pushes.
    send_n(&alice, "g2", 3).await;
    send_n(&alice, "g3", 3).await;
    counted(&gw, 9).await;
    send_n(&alice, "g1", 12).await;
    counted(&gw, 21).await;

    let bob = gw.connect_device("bob", "phone").await;
    let pushed = receive(&bob, 3 + 3 + 5).await;
    assert_eq!(
        by_group(&pushed),
        BTreeMap::from([
            ("g1".into(), vec![11, 12, 13, 14, 15]),
            ("g2".into(), vec![1, 2, 3]),
            ("g3".into(), vec![1, 2, 3]),
        ])
    );
    let skipped = bob.next_skipped(PATIENCE).await.expect("a Skipped notice");
    assert_eq!(
        skipped,
        Skipped {
            group: "g1".into(),
            first: 4,
            last: 10,
        }
    );
    // The application fetches what it skipped: with the pushes, every message once.
    let fetched = bob
        .history("g1", HistoryPage::After(skipped.first - 1), 7)
        .await
        .unwrap();
    assert_eq!(seqs(&fetched), (4..=10).collect::<Vec<_>>());
    assert_eq!(
        texts(&fetched)[0],
        "g1-0",
        "the first of the twelve later messages"
    );
    assert_quiet(&bob, Duration::from_millis(300)).await;
    assert!(bob.next_skipped(Duration::from_millis(10)).await.is_none());
    bob.close().await;

    // In sync again: a reconnect with nothing new pushes nothing.
    let bob = gw.connect_device("bob", "phone").await;
    assert_quiet(&bob, Duration::from_millis(500)).await;
    assert!(bob.next_skipped(Duration::from_millis(10)).await.is_none());
}

#[tokio::test]
async fn a_device_connecting_between_a_send_and_its_flush_still_gets_it() {
    // A long flush interval: bob connects before the message reaches his buffer.
    let gw = TestGateway::start_with(|c| c.unread.flush_ms = 3_000).await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();
    alice.send("g", "early").await.unwrap();
    let bob = gw.connect("bob").await;
    assert_eq!(
        gw.unread_flushes(),
        0,
        "the test needs bob to connect first"
    );
    let got = receive(&bob, 1).await;
    assert_eq!(texts(&got), ["early"]);
}
