//! The plugin chain end to end: bundled policies through real clients, order, reload under
//! live connections, and misbehaving plugins that must never take the gateway down.

use chat_client::{ErrorCode, HistoryPage, Message};
use chat_gateway::plugins::{Failure, PluginSpec};
use chat_tests::*;

fn hidden_seqs(messages: &[Message]) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m.is_hidden())
        .map(|m| m.seq)
        .collect()
}

#[tokio::test]
async fn delete_for_me_hides_a_message_from_that_user_only_everywhere_and_for_good() {
    let mut gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();
    for text in ["keep", "regret", "keep too"] {
        alice.send("g", text).await.unwrap();
    }
    receive(&bob, 3).await;
    assert_eq!(
        bob.delete_for_me("g", 2).await.unwrap(),
        "deleted 2 for you"
    );

    let page = bob.history("g", HistoryPage::After(0), 10).await.unwrap();
    assert_eq!(seqs(&page), [1, 2, 3], "the seq stays, so no gap appears");
    assert_eq!(hidden_seqs(&page), [2]);
    assert!(
        page[1].body.is_empty() && page[1].sender.is_empty(),
        "{:?}",
        page[1]
    );
    let alices = alice.history("g", HistoryPage::After(0), 10).await.unwrap();
    assert_eq!(
        texts(&alices),
        ["keep", "regret", "keep too"],
        "other members still see it"
    );

    // Another device of bob's, catching up from the log, gets the placeholder too.
    let tablet = gw.connect_device("bob", "tablet").await;
    let caught_up = receive(&tablet, 3).await;
    assert_eq!(hidden_seqs(&caught_up), [2]);

    gw.restart().await;
    let bob = gw.connect("bob").await;
    let page = bob
        .history("g", HistoryPage::Before(u64::MAX), 10)
        .await
        .unwrap();
    assert_eq!(hidden_seqs(&page), [2], "the deletion survives a restart");

    let err = bob
        .command("g", "delete", &users(&["soon"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::REJECTED));
    let err = bob.command("g", "frobnicate", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UNKNOWN_COMMAND));
    let eve = gw.connect("eve").await;
    assert_eq!(
        eve.delete_for_me("g", 1).await.unwrap_err().code(),
        Some(ErrorCode::NOT_MEMBER)
    );
}

#[tokio::test]
async fn a_private_message_reaches_its_recipients_and_a_placeholder_everyone_else() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice
        .create_group("g", &users(&["bob", "carol"]))
        .await
        .unwrap();
    let bob = gw.connect("bob").await;
    let carol = gw.connect("carol").await;

    let sent = alice
        .send_private("g", &users(&["bob"]), "just for bob")
        .await
        .unwrap();
    let to_bob = receive(&bob, 1).await;
    assert_eq!(texts(&to_bob), ["just for bob"]);
    assert_ne!(to_bob[0].flags & Message::FLAG_PRIVATE, 0);
    let to_carol = receive(&carol, 1).await;
    assert!(to_carol[0].is_hidden());
    assert_eq!(
        to_carol[0].seq, sent.seq,
        "carol sees the seq, not the message"
    );
    assert_eq!(
        texts(&receive(&alice, 1).await),
        ["just for bob"],
        "the sender sees their own"
    );

    let carols = carol.history("g", HistoryPage::After(0), 10).await.unwrap();
    assert_eq!(hidden_seqs(&carols), [1]);
    let err = alice
        .send_private("g", &users(&["mallory"]), "hi")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::INVALID_ARGUMENT),
        "recipients must be members"
    );

    // Private stays private even with no plugin at all: the gateway enforces it.
    gw.reload_plugins(&[]).await.unwrap();
    let carols = carol.history("g", HistoryPage::After(0), 10).await.unwrap();
    assert_eq!(hidden_seqs(&carols), [1]);
    alice
        .send_private("g", &users(&["bob"]), "still private")
        .await
        .unwrap();
    assert!(receive(&carol, 1).await[0].is_hidden());
}

#[tokio::test]
async fn the_private_message_policy_comes_from_the_operators_config() {
    let gw = TestGateway::start_with(|c| {
        c.plugins = Some(vec![bundled_spec(
            "private-messages",
            "max_recipients = 1\nallowed_senders = [\"alice\"]",
        )]);
    })
    .await;
    let alice = gw.connect("alice").await;
    alice
        .create_group("g", &users(&["bob", "carol"]))
        .await
        .unwrap();
    let err = alice
        .send_private("g", &users(&["bob", "carol"]), "two")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::REJECTED));
    assert!(err.to_string().contains("at most 1"), "{err}");
    let bob = gw.connect("bob").await;
    let err = bob
        .send_private("g", &users(&["carol"]), "psst")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::REJECTED));
    assert_eq!(
        alice
            .send_private("g", &users(&["carol"]), "ok")
            .await
            .unwrap()
            .seq,
        1
    );
}

#[tokio::test]
async fn the_ack_policy_comes_from_the_ack_batching_plugin() {
    let gw = TestGateway::start_with(|c| {
        c.plugins = Some(vec![bundled_spec(
            "ack-batching",
            "[live]\nmax_delay_ms = 20\nmax_batch = 7\nretransmit_ms = 1234\n[catch_up]\nmax_delay_ms = 300\nmax_batch = 500\nretransmit_ms = 9000",
        )]);
    })
    .await;
    let alice = gw.connect("alice").await;
    let live = alice.ack_policy();
    assert_eq!(
        (live.max_delay_ms, live.max_batch, live.retransmit_ms),
        (20, 7, 1234)
    );
    let catch_up = alice.catch_up_ack_policy();
    assert_eq!(
        (
            catch_up.max_delay_ms,
            catch_up.max_batch,
            catch_up.retransmit_ms
        ),
        (300, 500, 9000)
    );

    gw.reload_plugins(&[]).await.unwrap();
    let later = gw.connect("alice").await;
    assert_eq!(
        later.ack_policy(),
        chat_gateway::config::DeliveryConfig::default().ack_policy(),
        "without the plugin, the gateway's default"
    );
}

#[tokio::test]
async fn plugin_order_matters_and_reloading_keeps_connections() {
    let mask = bundled_spec("word-filter", "words = [\"darn\"]\nmode = \"mask\"");
    let no_stars = test_plugin_spec("no-stars", Failure::FailClosed);
    let gw =
        TestGateway::start_with(|c| c.plugins = Some(vec![mask.clone(), no_stars.clone()])).await;
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();

    // Masking first turns the word into stars, which the next plugin refuses.
    let err = alice.send("g", "darn it").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::REJECTED));

    // The other order: the star check passes, then the word is masked.
    gw.reload_plugins(&[no_stars, mask]).await.unwrap();
    alice.send("g", "darn it").await.unwrap();
    assert_eq!(
        texts(&receive(&bob, 1).await),
        ["**** it"],
        "the same connection, the new chain"
    );

    // A file that is not a plugin is refused and the running chain stays.
    let broken = PluginSpec::new(test_plugin("wrong-world").display().to_string());
    let err = gw.reload_plugins(&[broken]).await.unwrap_err();
    assert!(err.to_string().contains("wrong"), "{err}");
    alice.send("g", "darn again").await.unwrap();
    assert_eq!(texts(&receive(&bob, 1).await), ["**** again"]);
}

/// Every misbehaving plugin, fail-open: messages go through unfiltered, the fault is
/// counted, the plugin is disabled after `max_faults`, and everyone else is served.
#[tokio::test]
async fn misbehaving_plugins_cost_only_their_own_call() {
    for name in [
        "spin",
        "memory-hog",
        "trap",
        "huge-return",
        "host-call-storm",
    ] {
        let gw = TestGateway::start_with(|c| {
            c.plugins = Some(vec![test_plugin_spec(name, Failure::FailOpen)])
        })
        .await;
        let alice = gw.connect("alice").await;
        let bob = gw.connect("bob").await;
        alice.create_group("g", &users(&["bob"])).await.unwrap();
        for i in 1..=4u64 {
            let sent = alice
                .send("g", format!("m{i}"))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(sent.seq, i, "{name}");
        }
        assert_eq!(
            texts(&receive(&bob, 4).await),
            ["m1", "m2", "m3", "m4"],
            "{name}: unfiltered"
        );
        let stats = gw.plugin_stats();
        let (_, calls, faults, disabled) = &stats[0];
        assert_eq!(*faults, 3, "{name}: faults counted until disabled");
        assert!(*disabled, "{name}: disabled after 3 faults in a row");
        assert_eq!(*calls, 3, "{name}: a disabled plugin is not called");
        assert_eq!(
            bob.history("g", HistoryPage::After(0), 10)
                .await
                .unwrap()
                .len(),
            4
        );
    }
}

#[tokio::test]
async fn a_fail_closed_plugin_that_faults_refuses_with_a_clear_error_and_stores_nothing() {
    let gw = TestGateway::start_with(|c| {
        c.plugins = Some(vec![test_plugin_spec("trap", Failure::FailClosed)])
    })
    .await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &[]).await.unwrap();
    let err = alice.send("g", "hello").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PLUGIN_FAILED));
    assert!(err.code().unwrap().is_retryable());
    assert!(
        alice
            .history("g", HistoryPage::After(0), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Reloading re-enables it (and a fixed chain takes over at once).
    gw.reload_plugins(&[test_plugin_spec("accepts-all", Failure::FailClosed)])
        .await
        .unwrap();
    assert_eq!(alice.send("g", "hello").await.unwrap().seq, 1);
}

#[tokio::test]
async fn a_plugin_notice_reaches_one_member_and_its_state_survives_a_restart() {
    let specs = vec![test_plugin_spec("notifier", Failure::FailClosed)];
    let mut gw = TestGateway::start_with(|c| c.plugins = Some(specs.clone())).await;
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();

    assert_eq!(
        bob.command("g", "ping", &[]).await.unwrap(),
        "sent notice 1"
    );
    let notice = receive(&bob, 1).await;
    assert_eq!(
        (notice[0].sender.as_str(), texts(&notice)[0].as_str()),
        ("plugin:notifier", "pong #1")
    );
    assert_ne!(notice[0].flags & Message::FLAG_PRIVATE, 0);
    assert!(
        receive(&alice, 1).await[0].is_hidden(),
        "only bob sees his notice"
    );

    gw.restart().await;
    let bob = gw.connect("bob").await;
    assert_eq!(
        bob.command("g", "ping", &[]).await.unwrap(),
        "sent notice 2"
    );
    // (Pushes are not awaited here: the first notice may come again if its ACK was
    // still batched when the gateway stopped.)
    let got = bob.history("g", HistoryPage::After(1), 10).await.unwrap();
    assert_eq!(
        texts(&got),
        ["pong #2"],
        "the plugin's key-value state survived the restart"
    );
}
