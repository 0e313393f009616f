use std::time::Duration;

use chat_client::{ErrorCode, HistoryPage, Role};
use chat_tests::*;

#[tokio::test]
async fn the_owner_manages_members_and_others_may_not() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    alice.create_group("club", &users(&["bob"])).await.unwrap();

    let err = bob
        .add_members("club", &users(&["mallory"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NOT_OWNER));
    let err = bob
        .remove_members("club", &users(&["alice"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NOT_OWNER));
    let err = alice.create_group("club", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::GROUP_EXISTS));

    alice
        .add_members("club", &users(&["carol", "dave"]))
        .await
        .unwrap();
    let members = bob.members("club").await.unwrap();
    let names: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
    assert_eq!(names, ["alice", "bob", "carol", "dave"]);
    assert_eq!(members[0].role, Role::Owner);
    assert_eq!(members[1].role, Role::Member);

    alice
        .remove_members("club", &users(&["dave"]))
        .await
        .unwrap();
    bob.leave_group("club").await.unwrap();
    let names: Vec<String> = alice
        .members("club")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert_eq!(names, ["alice", "carol"]);
    let err = alice.leave_group("club").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::INVALID_ARGUMENT),
        "the owner cannot leave"
    );
}

#[tokio::test]
async fn members_list_pages_through_large_groups() {
    let gw = TestGateway::start().await;
    let owner = gw.connect("owner").await;
    let many: Vec<String> = (0..2500).map(|i| format!("user{i:05}")).collect();
    owner.create_group("big", &many[..1000]).await.unwrap();
    owner.add_members("big", &many[1000..2000]).await.unwrap();
    owner.add_members("big", &many[2000..]).await.unwrap();
    let members = owner.members("big").await.unwrap();
    assert_eq!(members.len(), 2501);
    assert_eq!(members.last().unwrap().user, "user02499");
}

#[tokio::test]
async fn non_members_can_neither_send_nor_read() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    let eve = gw.connect("eve").await;
    alice.create_group("secret", &[]).await.unwrap();
    alice.send("secret", "for members only").await.unwrap();

    let err = eve.send("secret", "let me in").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NOT_MEMBER));
    let err = eve
        .history("secret", HistoryPage::Before(u64::MAX), 10)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NOT_MEMBER));
    let err = eve.members("secret").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NOT_MEMBER));
    let err = eve.send("no-such-group", "hello?").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::NOT_MEMBER),
        "a missing group looks the same as a closed one"
    );
    assert_quiet(&eve, Duration::from_millis(200)).await;

    let history = alice
        .history("secret", HistoryPage::After(0), 10)
        .await
        .unwrap();
    assert_eq!(
        texts(&history),
        ["for members only"],
        "the refused send stored nothing"
    );
}

#[tokio::test]
async fn membership_changes_take_effect_on_live_connections() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    alice.create_group("live", &[]).await.unwrap();
    alice.send("live", "before bob").await.unwrap();

    alice.add_members("live", &users(&["bob"])).await.unwrap();
    alice.send("live", "after bob joined").await.unwrap();
    let got = receive(&bob, 1).await;
    assert_eq!(texts(&got), ["after bob joined"]);
    assert_eq!(got[0].seq, 2);

    alice
        .remove_members("live", &users(&["bob"]))
        .await
        .unwrap();
    alice.send("live", "after bob left").await.unwrap();
    assert_quiet(&bob, Duration::from_millis(400)).await;
    let err = bob
        .history("live", HistoryPage::After(0), 10)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NOT_MEMBER));
}

#[tokio::test]
async fn conversations_are_ordered_by_latest_message() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    for group in ["a", "b", "c"] {
        alice.create_group(group, &[]).await.unwrap();
    }
    alice.send("b", "1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    alice.send("a", "1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    alice.send("a", "2").await.unwrap();
    let list = alice.conversations(0).await.unwrap();
    let order: Vec<(&str, u64)> = list
        .iter()
        .map(|c| (c.group.as_str(), c.head_seq))
        .collect();
    assert_eq!(order[..2], [("a", 2), ("b", 1)]);
    assert_eq!(order[2], ("c", 0));
    assert!(list[0].last_ts_ms >= list[1].last_ts_ms);

    let bob = gw.connect("bob").await;
    assert!(bob.conversations(0).await.unwrap().is_empty());
}
