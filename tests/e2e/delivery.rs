use std::time::Duration;

use chat_client::{ErrorCode, HistoryPage};
use chat_protocol::{AckRange, Frame, FrameDecoder, PROTOCOL_VERSION};
use chat_tests::*;

#[tokio::test]
async fn an_offline_member_catches_up_in_order_without_gaps_or_duplicates() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();

    let bob = gw.connect_device("bob", "phone").await;
    for i in 1..=3 {
        alice.send("g", format!("m{i}")).await.unwrap();
    }
    assert_eq!(seqs(&receive(&bob, 3).await), [1, 2, 3]);
    bob.close().await;

    for i in 4..=40 {
        alice.send("g", format!("m{i}")).await.unwrap();
    }
    let bob = gw.connect_device("bob", "phone").await;
    let got = receive(&bob, 37).await;
    assert_eq!(seqs(&got), (4..=40).collect::<Vec<_>>());
    assert_quiet(&bob, Duration::from_millis(300)).await;

    // A device that never connected before gets everything since bob joined.
    let tablet = gw.connect_device("bob", "tablet").await;
    assert_eq!(
        seqs(&receive(&tablet, 40).await),
        (1..=40).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn live_pushes_and_catch_up_interleave_without_loss() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();
    for i in 1..=50 {
        alice.send("g", format!("m{i}")).await.unwrap();
    }
    // Bob connects while alice keeps sending: catch-up and live delivery overlap.
    let sender = tokio::spawn(async move {
        for i in 51..=100 {
            alice.send("g", format!("m{i}")).await.unwrap();
        }
        alice
    });
    let bob = gw.connect("bob").await;
    assert_eq!(
        seqs(&receive(&bob, 100).await),
        (1..=100).collect::<Vec<_>>()
    );
    sender.await.unwrap();
    assert_quiet(&bob, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn pushes_not_acknowledged_before_a_drop_come_again_on_the_next_connection() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();
    let mut bob = raw_session(&gw, "bob").await;
    alice.send("g", "one").await.unwrap();
    alice.send("g", "two").await.unwrap();
    let pushes = bob.pushes(2).await;
    assert_eq!(pushes, [1, 2]);
    bob.ack(1, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    bob.connection.close(0u32.into(), b"network gone");

    let bob = gw.connect_device("bob", "raw").await;
    let got = receive(&bob, 1).await;
    assert_eq!(
        (got[0].seq, texts(&got)[0].as_str()),
        (2, "two"),
        "only the unacknowledged push comes again"
    );
    assert_quiet(&bob, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn unacknowledged_pushes_are_retransmitted_and_the_client_drops_the_copies() {
    // No plugins: the [delivery] settings are the ACK policy (ack-batching would set its own).
    let gw = TestGateway::start_with(|c| {
        c.delivery.ack_delay_ms = 50;
        c.delivery.retransmit_ms = 200;
        c.plugins = Some(vec![]);
    })
    .await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();

    // A raw receiver that never acknowledges sees the same push again and again.
    let mut raw = raw_session(&gw, "bob").await;
    alice.send("g", "hello").await.unwrap();
    assert_eq!(raw.pushes(3).await, [1, 1, 1]);
    raw.ack(1, 1).await;
    raw.expect_no_push(Duration::from_millis(600)).await;

    // The client library acknowledges only what the application takes, and surfaces
    // each message once however many copies arrive meanwhile.
    let bob = gw.connect_device("bob", "phone").await;
    alice.send("g", "again").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let got = receive(&bob, 2).await;
    assert_eq!(seqs(&got), [1, 2]);
    assert_quiet(&bob, Duration::from_millis(600)).await;
}

#[tokio::test]
async fn a_restarted_gateway_keeps_history_and_continues_the_sequence() {
    let mut gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();
    for i in 1..=3 {
        alice.send("g", format!("m{i}")).await.unwrap();
    }
    let bob = gw.connect("bob").await;
    assert_eq!(seqs(&receive(&bob, 3).await), [1, 2, 3]);
    bob.close().await;
    let cert = std::fs::read(gw.cert()).unwrap();

    gw.restart().await;
    assert_eq!(
        alice.send("g", "dead connection").await.unwrap_err().code(),
        Some(ErrorCode::SHUTTING_DOWN)
    );
    assert_eq!(
        std::fs::read(gw.cert()).unwrap(),
        cert,
        "the certificate is reused"
    );

    let alice = gw.connect("alice").await;
    let history = alice.history("g", HistoryPage::After(0), 10).await.unwrap();
    assert_eq!(texts(&history), ["m1", "m2", "m3"]);
    assert_eq!(alice.send("g", "m4").await.unwrap().seq, 4);
    let bob = gw.connect("bob").await;
    let got = receive(&bob, 1).await;
    assert_eq!(
        (got[0].seq, texts(&got)[0].as_str()),
        (4, "m4"),
        "bob's cursor survived the restart"
    );
    assert_quiet(&bob, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_slow_reader_is_caught_up_from_the_log_without_loss() {
    // A tiny queue and window force the lagging path: dropped live events, paused delivery.
    let gw = TestGateway::start_with(|c| {
        c.delivery.queue = 4;
        c.delivery.window = 8;
    })
    .await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();
    let bob = gw.connect("bob").await;
    for i in 1..=200 {
        alice.send("g", format!("m{i}")).await.unwrap();
    }
    assert_eq!(
        seqs(&receive(&bob, 200).await),
        (1..=200).collect::<Vec<_>>()
    );
    assert_quiet(&bob, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn disconnecting_forgets_the_connection_and_its_groups() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("g1", &[]).await.unwrap();
    alice.create_group("g2", &[]).await.unwrap();
    let second = gw.connect("alice").await;
    assert_eq!(gw.local_counts(), (2, 2));
    second.close().await;
    alice.close().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while gw.local_counts() != (0, 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still registered: {:?}",
            gw.local_counts()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A hand-driven connection that reads pushes and acknowledges only when told to.
struct RawSession {
    connection: quinn::Connection,
    control: quinn::SendStream,
    /// Accepted on first read: a QUIC stream shows up at the peer with its first bytes.
    push: Option<quinn::RecvStream>,
    decoder: FrameDecoder,
}

async fn raw_session(gw: &TestGateway, user: &str) -> RawSession {
    let connection = raw_connection(gw).await;
    let (mut control, mut control_recv) = connection.open_bi().await.unwrap();
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        token: gw.token(user),
        device: "raw".into(),
    };
    control.write_all(&hello.encode()).await.unwrap();
    let mut decoder = FrameDecoder::new();
    loop {
        if let Some(frame) = decoder.next_frame().unwrap() {
            assert!(matches!(frame, Frame::Welcome { .. }), "{frame:?}");
            break;
        }
        let chunk = control_recv
            .read_chunk(65536, true)
            .await
            .unwrap()
            .expect("welcome");
        decoder.extend(&chunk.bytes);
    }
    RawSession {
        connection,
        control,
        push: None,
        decoder: FrameDecoder::new(),
    }
}

impl RawSession {
    async fn push_stream(&mut self) -> &mut quinn::RecvStream {
        if self.push.is_none() {
            self.push = Some(self.connection.accept_uni().await.unwrap());
        }
        self.push.as_mut().unwrap()
    }

    /// The seqs of the next `n` pushes (unread count notices skipped).
    async fn pushes(&mut self, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        tokio::time::timeout(PATIENCE, async {
            while seqs.len() < n {
                while let Some(frame) = self.decoder.next_frame().unwrap() {
                    match frame {
                        Frame::Push { message } => seqs.push(message.seq),
                        Frame::UnreadChanged { .. } => {}
                        other => panic!("not a push: {other:?}"),
                    }
                }
                if seqs.len() < n {
                    let chunk = self
                        .push_stream()
                        .await
                        .read_chunk(65536, true)
                        .await
                        .unwrap()
                        .expect("push stream open");
                    self.decoder.extend(&chunk.bytes);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("got {seqs:?}, wanted {n} pushes"));
        seqs
    }

    /// No `Push` arrives within `wait` (unread count notices may).
    async fn expect_no_push(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(frame) = self.decoder.next_frame().unwrap() {
                if let Frame::Push { message } = frame {
                    panic!("unexpected push: {message:?}");
                }
            }
            let push = self.push_stream().await;
            match tokio::time::timeout_at(deadline, push.read_chunk(65536, true)).await {
                Ok(chunk) => {
                    let chunk = chunk.unwrap().expect("push stream open");
                    self.decoder.extend(&chunk.bytes);
                }
                Err(_) => return,
            }
        }
    }

    async fn ack(&mut self, first: u64, last: u64) {
        let ack = Frame::Ack {
            ranges: vec![AckRange {
                group: "g".into(),
                first,
                last,
            }],
        };
        self.control.write_all(&ack.encode()).await.unwrap();
    }
}
