//! Several gateways on one Redis: members spread across them, no central online state.

use std::time::Duration;

use chat_tests::*;

async fn gateways(redis: &RedisServer, n: usize) -> Vec<TestGateway> {
    let mut gateways = Vec::new();
    for _ in 0..n {
        let url = redis.url.clone();
        gateways.push(TestGateway::start_with(|c| c.redis = Some(url)).await);
    }
    gateways
}

/// Every key in the test's Redis.
fn keys(redis: &RedisServer) -> Vec<String> {
    let port = redis.url.rsplit(':').next().unwrap();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", port, "--raw", "KEYS", "*"])
        .output()
        .expect("redis-cli runs");
    let mut keys: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn members_on_three_gateways_each_receive_every_message_once_in_order() {
    let redis = RedisServer::start().await;
    let gws = gateways(&redis, 3).await;
    let alice = gws[0].connect("alice").await;
    alice
        .create_group("g", &users(&["bob", "carol"]))
        .await
        .unwrap();
    let bob = gws[1].connect("bob").await;
    let carol_phone = gws[2].connect_device("carol", "phone").await;
    let carol_laptop = gws[0].connect_device("carol", "laptop").await;

    for i in 1..=10 {
        alice.send("g", format!("a{i}")).await.unwrap();
    }
    for i in 11..=20 {
        bob.send("g", format!("b{i}")).await.unwrap();
    }
    let expected: Vec<u64> = (1..=20).collect();
    for client in [&alice, &bob, &carol_phone, &carol_laptop] {
        assert_eq!(
            seqs(&receive(client, 20).await),
            expected,
            "{}",
            client.user()
        );
        assert_quiet(client, Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_membership_change_on_one_gateway_is_honoured_by_another_at_once() {
    let redis = RedisServer::start().await;
    let gws = gateways(&redis, 3).await;
    let alice = gws[0].connect("alice").await;
    alice.create_group("g", &[]).await.unwrap();
    let dave = gws[2].connect("dave").await;

    alice.add_members("g", &users(&["dave"])).await.unwrap();
    alice.send("g", "welcome dave").await.unwrap();
    assert_eq!(texts(&receive(&dave, 1).await), ["welcome dave"]);

    alice.remove_members("g", &users(&["dave"])).await.unwrap();
    alice.send("g", "dave is gone").await.unwrap();
    assert_quiet(&dave, Duration::from_millis(400)).await;
}

#[tokio::test]
async fn redis_holds_no_key_saying_who_is_online_where() {
    let redis = RedisServer::start().await;
    let gws = gateways(&redis, 3).await;
    let owner = gws[0].connect("owner").await;
    owner
        .create_group("g", &users(&["u1", "u2", "u3"]))
        .await
        .unwrap();
    owner.close().await;
    let before = keys(&redis);

    let mut clients = Vec::new();
    for (i, user) in ["u1", "u2", "u3"].iter().enumerate() {
        clients.push(gws[i].connect(user).await);
    }
    assert_eq!(gws.iter().map(|g| g.local_counts().0).sum::<usize>(), 3);
    assert_eq!(keys(&redis), before, "connecting wrote nothing to Redis");
}
