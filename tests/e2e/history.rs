use std::time::Duration;

use chat_client::HistoryPage;
use chat_tests::*;

#[tokio::test]
async fn history_pages_backward_and_forward() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("log", &[]).await.unwrap();
    for i in 1..=25 {
        alice.send("log", format!("m{i}")).await.unwrap();
    }

    let latest = alice
        .history("log", HistoryPage::Before(u64::MAX), 10)
        .await
        .unwrap();
    assert_eq!(
        seqs(&latest),
        (16..=25).collect::<Vec<_>>(),
        "newest page, ascending"
    );
    let older = alice
        .history("log", HistoryPage::Before(16), 10)
        .await
        .unwrap();
    assert_eq!(seqs(&older), (6..=15).collect::<Vec<_>>());
    let oldest = alice
        .history("log", HistoryPage::Before(6), 10)
        .await
        .unwrap();
    assert_eq!(seqs(&oldest), (1..=5).collect::<Vec<_>>());
    assert!(
        alice
            .history("log", HistoryPage::Before(1), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let first = alice
        .history("log", HistoryPage::After(0), 10)
        .await
        .unwrap();
    assert_eq!(seqs(&first), (1..=10).collect::<Vec<_>>());
    assert_eq!(texts(&first)[0], "m1");
    let next = alice
        .history("log", HistoryPage::After(20), 10)
        .await
        .unwrap();
    assert_eq!(seqs(&next), (21..=25).collect::<Vec<_>>());
    assert!(
        alice
            .history("log", HistoryPage::After(25), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_member_added_later_never_sees_what_came_before() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &[]).await.unwrap();
    for i in 1..=5 {
        alice.send("g", format!("early {i}")).await.unwrap();
    }
    alice.add_members("g", &users(&["late"])).await.unwrap();
    alice.send("g", "welcome").await.unwrap();

    // Catch-up on connect starts after the watermark.
    let late = gw.connect("late").await;
    let got = receive(&late, 1).await;
    assert_eq!((got[0].seq, texts(&got)[0].as_str()), (6, "welcome"));
    assert_quiet(&late, Duration::from_millis(300)).await;

    // History, both directions, is clamped too.
    let back = late
        .history("g", HistoryPage::Before(u64::MAX), 50)
        .await
        .unwrap();
    assert_eq!(seqs(&back), [6]);
    let forward = late.history("g", HistoryPage::After(0), 50).await.unwrap();
    assert_eq!(seqs(&forward), [6]);
    let members = late.members("g").await.unwrap();
    let me = members.iter().find(|m| m.user == "late").unwrap();
    assert_eq!(me.joined_seq, 5);

    // Rejoining moves the watermark to the head at that moment.
    alice.remove_members("g", &users(&["late"])).await.unwrap();
    alice.send("g", "while away").await.unwrap();
    alice.add_members("g", &users(&["late"])).await.unwrap();
    let back = late
        .history("g", HistoryPage::Before(u64::MAX), 50)
        .await
        .unwrap();
    assert!(back.is_empty(), "got {:?}", seqs(&back));
}
