//! Several gateways on one Redis (or a Redis Cluster): members spread across them, no
//! central online state, and what happens when a gateway or Redis dies mid-traffic.

use std::time::Duration;

use chat_client::{Client, ConnectOptions, ErrorCode, HistoryPage, Sent};
use chat_gateway::Config;
use chat_gateway::redis_target::RedisTarget;
use chat_tests::*;

/// Points a gateway's config at `target`.
fn on(target: &RedisTarget) -> impl FnOnce(&mut Config) + use<> {
    let target = target.clone();
    move |c| match target {
        RedisTarget::Server(url) => c.redis = Some(url),
        RedisTarget::Cluster(seeds) => c.redis_cluster = seeds,
    }
}

/// `n` gateways sharing `target` and one certificate.
async fn gateways(target: &RedisTarget, n: usize) -> Vec<TestGateway> {
    let first = TestGateway::start_with(on(target)).await;
    let tls = first.tls();
    let mut gateways = vec![first];
    for _ in 1..n {
        let setup = on(target);
        let tls = tls.clone();
        gateways.push(
            TestGateway::start_with(move |c| {
                setup(c);
                c.tls = tls;
            })
            .await,
        );
    }
    gateways
}

/// Options for `user` on `gw` that reconnect, to `failover` if `gw` is gone.
fn reconnecting(gw: &TestGateway, user: &str, failover: &[&TestGateway]) -> ConnectOptions {
    ConnectOptions {
        reconnect: true,
        failover: failover.iter().map(|g| g.addr()).collect(),
        // Notice a killed gateway within a second or two.
        idle_timeout: Duration::from_millis(1500),
        ..gw.options(user, "phone")
    }
}

/// Sends `m0..m{n}` one after another with ids `id-{i}`, returning every acceptance.
/// `midway` runs (in the background) once `n / 3` are acknowledged.
async fn send_through(
    sender: &Client,
    n: usize,
    midway: impl std::future::Future<Output = ()> + Send + 'static,
) -> Vec<Sent> {
    let mut midway = Some(midway);
    let mut accepted = Vec::new();
    for i in 0..n {
        if i == n / 3 {
            tokio::spawn(midway.take().unwrap());
        }
        let sent = sender
            .send_with_id("g", &format!("id-{i}"), format!("m{i}"))
            .await
            .unwrap_or_else(|e| panic!("send {i} failed for good: {e}"));
        accepted.push(sent);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    accepted
}

/// `client` surfaces exactly `m0..m{n}`, in order, each once, and then nothing.
async fn assert_gets_each_once(client: &Client, n: usize) {
    let got = receive(client, n).await;
    let expected: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&got), expected, "{}", client.user());
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_quiet(client, Duration::from_millis(300)).await;
}

/// The group's log holds exactly the accepted messages, once each, gapless.
async fn assert_log_holds(reader: &Client, accepted: &[Sent]) {
    let mut seqs: Vec<u64> = accepted.iter().map(|s| s.seq).collect();
    seqs.sort();
    let n = accepted.len() as u64;
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "seqs are gapless and unique"
    );
    let log = reader
        .history("g", HistoryPage::Before(u64::MAX), 500)
        .await
        .unwrap();
    let expected: Vec<String> = (0..accepted.len()).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&log), expected, "the log holds each message once");
}

async fn spread_group_receives_everything_once_in_order(gws: &[TestGateway]) {
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
async fn members_on_three_gateways_each_receive_every_message_once_in_order() {
    let redis = RedisServer::start().await;
    let gws = gateways(&RedisTarget::Server(redis.url.clone()), 3).await;
    spread_group_receives_everything_once_in_order(&gws).await;
}

#[tokio::test]
async fn the_same_group_on_a_redis_cluster_uses_one_shard_channel() {
    let cluster = RedisCluster::start().await;
    let gws = gateways(&RedisTarget::Cluster(cluster.seeds()), 3).await;
    spread_group_receives_everything_once_in_order(&gws).await;

    // Sharded pub/sub: the group's channel exists on exactly one master, and no plain
    // (cluster-wide broadcast) channel is used.
    let holders: Vec<u16> = cluster
        .ports()
        .into_iter()
        .filter(|&port| {
            cluster
                .cli(port, &["PUBSUB", "SHARDCHANNELS"])
                .lines()
                .any(|c| c == "chat:{g:g}:events")
        })
        .collect();
    assert_eq!(holders.len(), 1, "one shard carries the group's channel");
    for port in cluster.ports() {
        assert_eq!(cluster.cli(port, &["PUBSUB", "CHANNELS"]).trim(), "");
    }
}

#[tokio::test]
async fn a_membership_change_on_one_gateway_is_honoured_by_another_at_once() {
    let redis = RedisServer::start().await;
    let gws = gateways(&RedisTarget::Server(redis.url.clone()), 3).await;
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
    let gws = gateways(&RedisTarget::Server(redis.url.clone()), 3).await;
    let owner = gws[0].connect("owner").await;
    owner
        .create_group("g", &users(&["u1", "u2", "u3"]))
        .await
        .unwrap();
    owner.close().await;
    let before = redis.keys();

    let mut clients = Vec::new();
    for (i, user) in ["u1", "u2", "u3"].iter().enumerate() {
        clients.push(gws[i].connect(user).await);
    }
    assert_eq!(gws.iter().map(|g| g.local_counts().0).sum::<usize>(), 3);
    assert_eq!(redis.keys(), before, "connecting wrote nothing to Redis");
}

#[tokio::test]
async fn killing_a_gateway_mid_traffic_loses_nothing_acknowledged() {
    let redis = RedisServer::start().await;
    let target = RedisTarget::Server(redis.url.clone());
    let gws = gateways(&target, 2).await;
    let tls = gws[0].tls();
    let config = format!(
        "redis = \"{}\"\nplugins = []\n[tls]\ncert = {:?}\nkey = {:?}",
        redis.url,
        tls.cert.unwrap(),
        tls.key.unwrap()
    );
    let mut doomed = GatewayProcess::start(&config, gws[0].cert()).await;
    // Alice and Bob start on the doomed gateway, each with another to fail over to.
    let doomed_addr = doomed.addr;
    let on_doomed = |user: &str, failover: &TestGateway| ConnectOptions {
        server: doomed_addr,
        ..reconnecting(failover, user, &[failover])
    };
    let alice = Client::connect(on_doomed("alice", &gws[0])).await.unwrap();
    let bob = Client::connect(on_doomed("bob", &gws[1])).await.unwrap();
    alice
        .create_group("g", &users(&["bob", "carol"]))
        .await
        .unwrap();
    let carol = gws[0].connect("carol").await;

    let n = 60;
    let (killed_tx, killed) = tokio::sync::oneshot::channel();
    let kill = async move {
        doomed.kill();
        let _ = killed_tx.send(doomed);
    };
    let accepted = send_through(&alice, n, kill).await;
    let _doomed = killed.await.unwrap();

    assert_log_holds(&carol, &accepted).await;
    for client in [&alice, &bob, &carol] {
        assert_gets_each_once(client, n).await;
    }
    // Checked last: an idle receiver notices the dead gateway only after its idle timeout.
    assert!(alice.reconnects() >= 1 && bob.reconnects() >= 1);
}

#[tokio::test]
async fn draining_a_gateway_moves_its_clients_without_loss_or_repeats() {
    let redis = RedisServer::start().await;
    let target = RedisTarget::Server(redis.url.clone());
    let mut gws = gateways(&target, 2).await;
    // Alice (sending) and Bob start on the gateway to drain, the other as their failover.
    let alice = Client::connect(reconnecting(&gws[0], "alice", &[&gws[1]]))
        .await
        .unwrap();
    let bob = Client::connect(reconnecting(&gws[0], "bob", &[&gws[1]]))
        .await
        .unwrap();
    alice
        .create_group("g", &users(&["bob", "carol"]))
        .await
        .unwrap();
    let carol = gws[1].connect("carol").await;

    let deadline = Duration::from_secs(10);
    // Kept after the drain: its data directory holds the certificate clients verify.
    let mut draining = gws.remove(0);
    let (drained_tx, drained) = tokio::sync::oneshot::channel();
    let drain = async move {
        let started = tokio::time::Instant::now();
        let left = draining.drain(deadline).await;
        let _ = drained_tx.send((left, started.elapsed(), draining));
    };
    let n = 60;
    let accepted = send_through(&alice, n, drain).await;
    let (left, took, _drained) = drained.await.unwrap();
    assert_eq!(left, 0, "every client moved before the deadline");
    assert!(took < deadline, "drained in {took:?}");
    assert_eq!(
        gws[0].live_gateways().await,
        [gws[0].gateway_id()],
        "the drained gateway left the registry at once, not 3 s later"
    );

    assert_log_holds(&carol, &accepted).await;
    for client in [&alice, &bob, &carol] {
        assert_gets_each_once(client, n).await;
    }
    // Bob may have left after the last message, and reconnects after a backoff.
    let patience = tokio::time::Instant::now() + PATIENCE;
    while bob.reconnects() == 0 && tokio::time::Instant::now() < patience {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((alice.reconnects(), bob.reconnects()), (1, 1));
    // And is served by the other gateway.
    alice.send("g", "after").await.unwrap();
    assert_eq!(texts(&receive(&bob, 1).await), ["after"]);
}

#[tokio::test]
async fn restarting_redis_mid_traffic_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start_durable().await;
    let gws = gateways(&RedisTarget::Server(redis.url.clone()), 2).await;
    let alice = gws[0].connect("alice").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();
    let bob = gws[1].connect("bob").await;

    let n = 60;
    let (restarted_tx, restarted) = tokio::sync::oneshot::channel();
    let restart = async move {
        redis.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        redis.revive().await;
        let _ = restarted_tx.send(redis);
    };
    let accepted = send_through(&alice, n, restart).await;
    let _redis = restarted.await.unwrap();

    assert_log_holds(&bob, &accepted).await;
    assert_gets_each_once(&alice, n).await;
    assert_gets_each_once(&bob, n).await;
    // Live delivery resumed on both gateways.
    alice.send("g", "after").await.unwrap();
    assert_eq!(texts(&receive(&bob, 1).await), ["after"]);
    // Operators see it: pub/sub was lost and resubscribed, store calls failed meanwhile.
    for gw in &gws {
        let metrics = gw.metrics().await;
        assert!(
            chat_tests::metric(&metrics, "chat_bus_resyncs_total") >= 1.0,
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn with_redis_down_sends_fail_fast_as_unavailable_and_connections_stay_up() {
    let mut redis = RedisServer::start_durable().await;
    let gws = gateways(&RedisTarget::Server(redis.url.clone()), 1).await;
    let impatient = Client::connect(ConnectOptions {
        send_retry: Duration::ZERO,
        ..gws[0].options("alice", "phone")
    })
    .await
    .unwrap();
    impatient.create_group("g", &[]).await.unwrap();
    let patient = gws[0].connect("alice").await;

    redis.kill();
    let started = tokio::time::Instant::now();
    let err = impatient.send("g", "lost?").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UNAVAILABLE), "{err}");
    assert!(err.code().unwrap().is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5), "failed fast");
    let err = impatient
        .history("g", HistoryPage::Before(u64::MAX), 10)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UNAVAILABLE), "{err}");
    assert!(
        impatient.close_reason().is_none(),
        "the connection stays up"
    );

    // The library retries with the same id while Redis comes back: stored once.
    let revive = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        redis.revive().await;
        redis
    });
    let sent = patient.send_with_id("g", "once", "hello").await.unwrap();
    let _redis = revive.await.unwrap();
    assert_eq!((sent.seq, sent.duplicate), (1, false));
    let again = patient.send_with_id("g", "once", "hello").await.unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));
    assert_eq!(
        texts(
            &impatient
                .history("g", HistoryPage::Before(u64::MAX), 10)
                .await
                .unwrap()
        ),
        ["hello"]
    );
}
