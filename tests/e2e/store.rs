//! One store behaviour suite, run against every backend: the embedded redb store and Redis
//! (a `redis-server` of the test's own).

use std::sync::Arc;

use bytes::Bytes;
use chat_gateway::redis_target::RedisTarget;
use chat_gateway::store::{
    EmbeddedStore, NewMessage, OfflineBuffer, PageFrom, RedisStore, SeqRange, Store, StoreError,
};
use chat_tests::{RedisCluster, RedisServer};

fn message(group: &str, sender: &str, msg_id: &str, body: &str) -> NewMessage {
    NewMessage {
        group: group.into(),
        sender: sender.into(),
        msg_id: msg_id.into(),
        body: Bytes::copy_from_slice(body.as_bytes()),
        ts_ms: 1_000 + msg_id.len() as u64,
        visible_to: None,
    }
}

fn names(users: &[&str]) -> Vec<String> {
    users.iter().map(|u| u.to_string()).collect()
}

const ALL: SeqRange = SeqRange {
    after: 0,
    before: u64::MAX,
};

async fn groups_and_members(store: &dyn Store) {
    store
        .create_group("g", "alice", &names(&["bob"]), 500)
        .await
        .unwrap();
    assert!(matches!(
        store.create_group("g", "eve", &[], 600).await,
        Err(StoreError::GroupExists(_))
    ));
    let info = store.group("g").await.unwrap().unwrap();
    assert_eq!(
        (
            info.owner.as_str(),
            info.head_seq,
            info.created_ms,
            info.last_ts_ms
        ),
        ("alice", 0, 500, 500)
    );
    assert!(store.group("nope").await.unwrap().is_none());

    store
        .append(message("g", "alice", "m1", "one"))
        .await
        .unwrap();
    let added = store
        .add_members("g", &names(&["carol", "bob"]))
        .await
        .unwrap();
    assert_eq!(added.len(), 1, "bob was already in");
    assert_eq!((added[0].user.as_str(), added[0].joined_seq), ("carol", 1));
    let carol = store.membership("g", "carol").await.unwrap().unwrap();
    assert_eq!((carol.owner, carol.joined_seq), (false, 1));
    assert!(store.membership("g", "alice").await.unwrap().unwrap().owner);
    assert!(matches!(
        store.add_members("nope", &names(&["x"])).await,
        Err(StoreError::NoSuchGroup(_))
    ));

    let first = store.members("g", "", 2).await.unwrap();
    assert_eq!(
        first.iter().map(|m| m.user.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    let rest = store.members("g", "bob", 2).await.unwrap();
    assert_eq!(
        rest.iter().map(|m| m.user.as_str()).collect::<Vec<_>>(),
        ["carol"]
    );

    assert_eq!(
        store
            .remove_members("g", &names(&["bob", "zed"]))
            .await
            .unwrap(),
        ["bob"]
    );
    assert!(store.membership("g", "bob").await.unwrap().is_none());
    assert!(store.groups_of("bob").await.unwrap().is_empty());
    let carols = store.groups_of("carol").await.unwrap();
    assert_eq!((carols[0].group.as_str(), carols[0].joined_seq), ("g", 1));
}

async fn the_log(store: &dyn Store) {
    store.create_group("log", "alice", &[], 0).await.unwrap();
    for i in 1..=5 {
        let appended = store
            .append(message("log", "alice", &format!("id{i}"), &format!("m{i}")))
            .await
            .unwrap();
        assert_eq!((appended.seq, appended.duplicate), (i, false));
    }
    let again = store
        .append(message("log", "alice", "id3", "m3 retried"))
        .await
        .unwrap();
    assert_eq!((again.seq, again.duplicate), (3, true));
    let other_sender = store
        .append(message("log", "bob", "id3", "bob's own id3"))
        .await
        .unwrap();
    assert_eq!(
        (other_sender.seq, other_sender.duplicate),
        (6, false),
        "ids are per sender"
    );
    assert!(matches!(
        store.append(message("nope", "a", "x", "y")).await,
        Err(StoreError::NoSuchGroup(_))
    ));

    let seqs = |page: &[chat_gateway::store::StoredMessage]| {
        page.iter().map(|m| m.seq).collect::<Vec<_>>()
    };
    assert_eq!(
        seqs(
            &store
                .messages("log", ALL, PageFrom::Oldest, 2)
                .await
                .unwrap()
        ),
        [1, 2]
    );
    assert_eq!(
        seqs(
            &store
                .messages("log", ALL, PageFrom::Newest, 2)
                .await
                .unwrap()
        ),
        [5, 6]
    );
    let window = SeqRange {
        after: 2,
        before: 5,
    };
    assert_eq!(
        seqs(
            &store
                .messages("log", window, PageFrom::Oldest, 10)
                .await
                .unwrap()
        ),
        [3, 4]
    );
    assert!(
        store
            .messages(
                "log",
                SeqRange {
                    after: 6,
                    before: u64::MAX
                },
                PageFrom::Oldest,
                10
            )
            .await
            .unwrap()
            .is_empty()
    );
    let third = &store
        .messages(
            "log",
            SeqRange {
                after: 2,
                before: 4,
            },
            PageFrom::Oldest,
            1,
        )
        .await
        .unwrap()[0];
    assert_eq!(
        (third.sender.as_str(), &third.body[..]),
        ("alice", &b"m3"[..]),
        "the retry stored nothing"
    );

    let info = store.group("log").await.unwrap().unwrap();
    assert_eq!(info.head_seq, 6);
    let conversations = store.conversations("alice").await.unwrap();
    assert_eq!(
        conversations
            .iter()
            .find(|(m, _)| m.group == "log")
            .unwrap()
            .1
            .head_seq,
        6
    );
}

async fn private_messages_and_cursors(store: &dyn Store) {
    store
        .create_group("p", "alice", &names(&["bob", "carol"]), 0)
        .await
        .unwrap();
    let mut private = message("p", "alice", "secret", "for bob");
    private.visible_to = Some(names(&["bob"]));
    store.append(private).await.unwrap();
    store
        .append(message("p", "alice", "open", "for all"))
        .await
        .unwrap();
    let page = store
        .messages("p", ALL, PageFrom::Oldest, 10)
        .await
        .unwrap();
    assert_eq!(page[0].visible_to.as_deref(), Some(&names(&["bob"])[..]));
    assert!(
        page[0].visible_to("bob") && page[0].visible_to("alice") && !page[0].visible_to("carol")
    );
    assert_eq!(page[1].visible_to, None);

    advance(store, "bob", "phone", &[("p", 2)]).await;
    advance(store, "bob", "phone", &[("p", 1)]).await;
    assert_eq!(
        store.cursors("bob", "phone").await.unwrap(),
        [("p".to_string(), 2)],
        "never backwards"
    );
    assert!(
        store.cursors("bob", "laptop").await.unwrap().is_empty(),
        "per device"
    );

    store.plugin_set("one", "k", b"v1").await.unwrap();
    store.plugin_set("two", "k", b"v2").await.unwrap();
    assert_eq!(
        store.plugin_get("one", "k").await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    store.plugin_delete("one", "k").await.unwrap();
    assert!(store.plugin_get("one", "k").await.unwrap().is_none());
    assert_eq!(
        store.plugin_get("two", "k").await.unwrap().as_deref(),
        Some(&b"v2"[..]),
        "namespaced"
    );
}

/// Unread counting: a range is counted once (compare-and-set on the counted seq), read
/// markers move counts only against the counted seq they were computed for.
async fn unread_counting(store: &dyn Store) {
    store
        .create_group("u", "alice", &names(&["bob"]), 0)
        .await
        .unwrap();
    for i in 0..3 {
        store
            .append(message("u", "alice", &format!("u{i}"), "x"))
            .await
            .unwrap();
    }
    assert_eq!(store.counted_seq("u").await.unwrap(), 0);
    let counts = store
        .count_unread("u", 0, 2, &[("bob".into(), 2)])
        .await
        .unwrap();
    assert_eq!(counts, Some(vec![("bob".into(), 2)]));
    // The same range again, or one starting elsewhere, is refused and changes nothing.
    assert_eq!(
        store
            .count_unread("u", 0, 2, &[("bob".into(), 2)])
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .count_unread("u", 1, 3, &[("bob".into(), 2)])
            .await
            .unwrap(),
        None
    );
    let counts = store
        .count_unread("u", 2, 3, &[("bob".into(), 1)])
        .await
        .unwrap();
    assert_eq!(counts, Some(vec![("bob".into(), 3)]));
    assert_eq!(store.counted_seq("u").await.unwrap(), 3);

    let bob = store.unread("bob").await.unwrap();
    let state = bob.iter().find(|s| s.group == "u").unwrap();
    assert_eq!(
        (
            state.count,
            state.read_seq,
            state.counted_seq,
            state.head_seq
        ),
        (3, 0, 3, 3)
    );
    // A marker computed against an old counted seq is refused.
    assert!(!store.mark_read("u", "bob", 2, 1, 2).await.unwrap());
    assert!(store.mark_read("u", "bob", 2, 1, 3).await.unwrap());
    let bob = store.unread("bob").await.unwrap();
    let state = bob.iter().find(|s| s.group == "u").unwrap();
    assert_eq!((state.count, state.read_seq), (1, 2));
    assert_eq!(store.read_marker("u", "bob").await.unwrap(), 2);
    assert_eq!(store.read_marker("u", "alice").await.unwrap(), 0);
    // Alice has no count yet: zero, in every group she is in.
    assert!(
        store
            .unread("alice")
            .await
            .unwrap()
            .iter()
            .all(|s| s.count == 0)
    );
}

async fn offline_buffers(store: &dyn Store) {
    let empty = store.offline("olga", "phone").await.unwrap();
    assert_eq!(empty, OfflineBuffer::default());
    assert!(empty.covers_device());
    let refs = |seq| vec![("olga".to_string(), seq), ("oscar".to_string(), seq)];
    store.buffer_offline("o1", &refs(3), 2).await.unwrap();
    store.buffer_offline("o2", &refs(1), 2).await.unwrap();
    // A newer reference replaces the group's entry and moves it to the next position;
    // written again while it is the latest, it stays there; an older one never lowers it.
    store.buffer_offline("o1", &refs(5), 2).await.unwrap();
    store.buffer_offline("o1", &refs(6), 2).await.unwrap();
    store.buffer_offline("o1", &refs(4), 2).await.unwrap();
    let mut buffer = store.offline("olga", "phone").await.unwrap();
    buffer.entries.sort();
    assert_eq!(
        buffer,
        OfflineBuffer {
            entries: vec![("o1".into(), 6), ("o2".into(), 1)],
            head: 3,
            evicted: 0,
            synced: 0,
        }
    );
    // Past the capacity the least recently written group goes (o2, at position 2), and
    // a device synced before that cannot trust the buffer any more.
    store.buffer_offline("o3", &refs(9), 2).await.unwrap();
    let mut buffer = store.offline("olga", "phone").await.unwrap();
    buffer.entries.sort();
    assert_eq!(buffer.entries, vec![("o1".into(), 6), ("o3".into(), 9)]);
    assert_eq!((buffer.head, buffer.evicted), (4, 2));
    assert!(!buffer.covers_device());
    // Sync points are per device and only move forward.
    store.offline_synced("olga", "phone", 4).await.unwrap();
    store.offline_synced("olga", "phone", 3).await.unwrap();
    let phone = store.offline("olga", "phone").await.unwrap();
    assert_eq!(phone.synced, 4);
    assert!(phone.covers_device());
    assert_eq!(store.offline("olga", "laptop").await.unwrap().synced, 0);
    // Each user has their own buffer.
    assert_eq!(store.offline("oscar", "phone").await.unwrap().synced, 0);
    // Written again after a device synced at its position, the latest entry moves on all
    // the same: once it is evicted, that device must learn the buffer no longer covers it
    // (another device's older sync point does not matter).
    let petra = |seq| vec![("petra".to_string(), seq)];
    store.buffer_offline("p1", &petra(1), 2).await.unwrap();
    store.offline_synced("petra", "laptop", 0).await.unwrap();
    store.offline_synced("petra", "phone", 1).await.unwrap();
    store.buffer_offline("p1", &petra(2), 2).await.unwrap();
    store.buffer_offline("p2", &petra(1), 2).await.unwrap();
    store.buffer_offline("p3", &petra(1), 2).await.unwrap();
    let phone = store.offline("petra", "phone").await.unwrap();
    assert_eq!((phone.head, phone.evicted), (4, 2));
    assert!(
        !phone.covers_device(),
        "p1 changed after the sync and was evicted"
    );
}

/// A batch of appends: each as `append` would, in order within each group — a repeated
/// (group, sender, msg_id) answered with its first result, a missing group refused without
/// stopping the rest.
async fn batched_appends(store: &dyn Store) {
    store
        .create_group("b1", "alice", &names(&["bob"]), 0)
        .await
        .unwrap();
    store
        .create_group("b2", "alice", &names(&["bob", "carol"]), 0)
        .await
        .unwrap();
    let mut private = message("b2", "alice", "p", "for bob");
    private.visible_to = Some(names(&["bob"]));
    let batch = vec![
        message("b1", "alice", "x", "one"),
        message("b2", "alice", "yy", "two"),
        message("nope", "alice", "z", "lost"),
        message("b1", "alice", "x", "one again"),
        private,
        message("b1", "bob", "x", "bob's x"),
    ];
    let results = store.append_batch(batch).await.unwrap();
    let outcomes: Vec<Result<(u64, u64, bool), String>> = results
        .into_iter()
        .map(|r| {
            r.map(|a| (a.seq, a.ts_ms, a.duplicate))
                .map_err(|e| e.to_string())
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            Ok((1, 1_001, false)),
            Ok((1, 1_002, false)),
            Err("no group nope".to_string()),
            Ok((1, 1_001, true)),
            Ok((2, 1_001, false)),
            Ok((2, 1_001, false)),
        ]
    );
    let bodies = |page: Vec<chat_gateway::store::StoredMessage>| -> Vec<(u64, String)> {
        page.into_iter()
            .map(|m| (m.seq, String::from_utf8_lossy(&m.body).into_owned()))
            .collect()
    };
    let b1 = store
        .messages("b1", ALL, PageFrom::Oldest, 10)
        .await
        .unwrap();
    assert_eq!(bodies(b1), [(1, "one".into()), (2, "bob's x".into())]);
    let b2 = store
        .messages("b2", ALL, PageFrom::Oldest, 10)
        .await
        .unwrap();
    assert_eq!(b2[1].visible_to.as_deref(), Some(&names(&["bob"])[..]));
    assert_eq!(bodies(b2), [(1, "two".into()), (2, "for bob".into())]);
    assert_eq!(store.group("b1").await.unwrap().unwrap().head_seq, 2);
    assert!(store.append_batch(Vec::new()).await.unwrap().is_empty());
}

/// Advances one device's cursors.
async fn advance(store: &dyn Store, user: &str, device: &str, cursors: &[(&str, u64)]) {
    let cursors = cursors.iter().map(|(g, s)| (g.to_string(), *s)).collect();
    store
        .advance_cursors_batch(&[(user.to_owned(), device.to_owned(), cursors)])
        .await
        .unwrap();
}

/// Cursors of many devices in one call, more than one script call's worth on Redis.
async fn batched_cursors(store: &dyn Store) {
    let cursors = |user: &str, device: &str| {
        let (store, user, device) = (store, user.to_owned(), device.to_owned());
        async move {
            let mut cursors = store.cursors(&user, &device).await.unwrap();
            cursors.sort();
            cursors
        }
    };
    advance(store, "dora", "phone", &[("a", 5)]).await;
    let mut batch: Vec<_> = (0..600)
        .map(|i| {
            (
                format!("user{i}"),
                "phone".to_owned(),
                vec![("a".into(), i)],
            )
        })
        .collect();
    batch.push((
        "dora".into(),
        "phone".into(),
        vec![("a".into(), 3), ("b".into(), 7)],
    ));
    batch.push(("dora".into(), "laptop".into(), Vec::new()));
    store.advance_cursors_batch(&batch).await.unwrap();

    assert_eq!(
        cursors("dora", "phone").await,
        [("a".to_string(), 5), ("b".to_string(), 7)],
        "a batch never moves a cursor backwards, and moves the others"
    );
    assert!(cursors("dora", "laptop").await.is_empty());
    for i in [1, 249, 250, 251, 599] {
        assert_eq!(
            cursors(&format!("user{i}"), "phone").await,
            [("a".to_string(), i)],
            "every device of the batch, whichever call carried it"
        );
    }
    store.advance_cursors_batch(&[]).await.unwrap();
}

async fn suite(store: Arc<dyn Store>) {
    groups_and_members(store.as_ref()).await;
    the_log(store.as_ref()).await;
    batched_appends(store.as_ref()).await;
    private_messages_and_cursors(store.as_ref()).await;
    unread_counting(store.as_ref()).await;
    offline_buffers(store.as_ref()).await;
    batched_cursors(store.as_ref()).await;
}

#[tokio::test]
async fn the_embedded_store_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    suite(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn the_redis_store_keeps_the_store_contract() {
    let redis = RedisServer::start().await;
    let target = RedisTarget::Server(redis.url.clone());
    suite(Arc::new(RedisStore::connect(&target).await.unwrap())).await;
}

#[tokio::test]
async fn the_redis_store_keeps_the_store_contract_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let target = RedisTarget::Cluster(cluster.seeds());
    suite(Arc::new(RedisStore::connect(&target).await.unwrap())).await;
}

#[tokio::test]
async fn concurrent_appends_on_redis_get_gapless_seqs() {
    let redis = RedisServer::start().await;
    let target = RedisTarget::Server(redis.url.clone());
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&target).await.unwrap());
    store.create_group("busy", "alice", &[], 0).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..25 {
                    seqs.push(
                        store
                            .append(message("busy", "alice", &format!("t{task}-{i}"), "x"))
                            .await
                            .unwrap()
                            .seq,
                    );
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=200).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_gateway_on_redis_serves_and_keeps_its_data_across_a_restart() {
    let redis = RedisServer::start().await;
    let url = redis.url.clone();
    let mut gw = chat_tests::TestGateway::start_with(|c| c.redis = Some(url)).await;
    let alice = gw.connect("alice").await;
    let bob = gw.connect("bob").await;
    alice
        .create_group("g", &chat_tests::users(&["bob"]))
        .await
        .unwrap();
    alice.send("g", "over redis").await.unwrap();
    assert_eq!(
        chat_tests::texts(&chat_tests::receive(&bob, 1).await),
        ["over redis"]
    );
    bob.close().await;

    gw.restart().await;
    let alice = gw.connect("alice").await;
    assert_eq!(alice.send("g", "after restart").await.unwrap().seq, 2);
    let bob = gw.connect("bob").await;
    let got = chat_tests::receive(&bob, 1).await;
    assert_eq!(
        (got[0].seq, chat_tests::texts(&got)[0].as_str()),
        (2, "after restart")
    );
}
