use std::time::Duration;

use chat_tests::*;

#[tokio::test]
async fn two_users_exchange_messages() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    alice.create_group("pair", &users(&["bob"])).await.unwrap();

    let sent = alice.send("pair", "hi bob").await.unwrap();
    assert_eq!(
        (sent.group.as_str(), sent.seq, sent.duplicate),
        ("pair", 1, false)
    );
    let got = receive(&bob, 1).await;
    assert_eq!(got[0].sender, "alice");
    assert_eq!(got[0].seq, 1);
    assert_eq!(got[0].ts_ms, sent.ts_ms);
    assert_eq!(texts(&got), ["hi bob"]);

    assert_eq!(bob.send("pair", "hi alice").await.unwrap().seq, 2);
    let got = receive(&alice, 2).await;
    assert_eq!(
        texts(&got),
        ["hi bob", "hi alice"],
        "the sender's own message is pushed to them too"
    );
}

#[tokio::test]
async fn every_connection_of_a_user_receives_every_message() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("team", &users(&["bob"])).await.unwrap();
    let phone = gw.connect_device("bob", "phone").await;
    let laptop = gw.connect_device("bob", "laptop").await;
    let tablet = gw.connect_device("bob", "tablet").await;
    let alice_laptop = gw.connect_device("alice", "laptop").await;

    for i in 1..=3 {
        alice.send("team", format!("m{i}")).await.unwrap();
    }
    for device in [&phone, &laptop, &tablet, &alice_laptop] {
        assert_eq!(
            seqs(&receive(device, 3).await),
            [1, 2, 3],
            "{}",
            device.user()
        );
    }
}

#[tokio::test]
async fn a_retried_send_with_the_same_id_is_stored_once() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();

    let first = alice.send_with_id("g", "msg-1", "once").await.unwrap();
    let retry = alice.send_with_id("g", "msg-1", "once").await.unwrap();
    assert!(!first.duplicate);
    assert!(retry.duplicate);
    assert_eq!((retry.seq, retry.ts_ms), (first.seq, first.ts_ms));
    let next = alice.send_with_id("g", "msg-2", "twice").await.unwrap();
    assert_eq!(next.seq, first.seq + 1, "no seq was spent on the retry");

    assert_eq!(texts(&receive(&bob, 2).await), ["once", "twice"]);
    assert_quiet(&bob, Duration::from_millis(300)).await;
    let history = bob
        .history("g", chat_client::HistoryPage::After(0), 10)
        .await
        .unwrap();
    assert_eq!(texts(&history), ["once", "twice"]);
}

#[tokio::test]
async fn messages_from_concurrent_senders_get_gapless_seqs_and_arrive_in_order() {
    let gw = TestGateway::start().await;
    let owner = gw.connect("owner").await;
    let senders = ["s1", "s2", "s3", "s4"];
    owner.create_group("busy", &users(&senders)).await.unwrap();
    let reader = gw.connect("owner").await;
    let mut tasks = Vec::new();
    for name in senders {
        let client = gw.connect(name).await;
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                seqs.push(
                    client
                        .send("busy", format!("{name}-{i}"))
                        .await
                        .unwrap()
                        .seq,
                );
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=100).collect::<Vec<u64>>());
    assert_eq!(
        seqs(&receive(&reader, 100).await),
        (1..=100).collect::<Vec<u64>>()
    );
}
