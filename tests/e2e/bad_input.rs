use chat_client::{ErrorCode, HistoryPage};
use chat_protocol::{Frame, FrameDecoder, MAX_BODY_LEN, MAX_FRAME_LEN, PROTOCOL_VERSION};
use chat_tests::*;

/// A connection past the handshake, for sending hand-made bytes on the control stream.
async fn authenticated(
    gw: &TestGateway,
    user: &str,
) -> (
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
    FrameDecoder,
) {
    let connection = raw_connection(gw).await;
    let (mut send, recv) = connection.open_bi().await.unwrap();
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        token: gw.token(user),
        device: "raw".into(),
    };
    send.write_all(&hello.encode()).await.unwrap();
    let mut session = (connection, send, recv, FrameDecoder::new());
    assert!(matches!(
        next_frame(&mut session.2, &mut session.3).await,
        Frame::Welcome { .. }
    ));
    session
}

async fn next_frame(recv: &mut quinn::RecvStream, decoder: &mut FrameDecoder) -> Frame {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(frame) = decoder.next_frame().unwrap() {
                return frame;
            }
            let chunk = recv
                .read_chunk(65536, true)
                .await
                .unwrap()
                .expect("stream open");
            decoder.extend(&chunk.bytes);
        }
    })
    .await
    .expect("a frame in time")
}

/// A group with a bystander who must not notice anything.
async fn bystander(gw: &TestGateway) -> chat_client::Client {
    let alice = gw.connect("alice").await;
    alice.create_group("calm", &[]).await.unwrap();
    alice
}

async fn bystander_still_works(alice: &chat_client::Client) {
    let sent = alice.send("calm", "business as usual").await.unwrap();
    let got = receive(alice, 1).await;
    assert_eq!(got[0].seq, sent.seq);
}

#[tokio::test]
async fn an_oversize_frame_closes_only_that_connection() {
    let gw = TestGateway::start().await;
    let alice = bystander(&gw).await;
    let (connection, mut send, _recv, _) = authenticated(&gw, "mallory").await;
    send.write_all(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes())
        .await
        .unwrap();
    send.write_all(&[0x15; 1024]).await.unwrap();
    let (code, reason) = closed_with(&connection).await;
    assert_eq!(code, ErrorCode::FRAME_TOO_LARGE);
    assert!(reason.contains("exceeds"), "{reason}");
    bystander_still_works(&alice).await;
}

#[tokio::test]
async fn garbage_instead_of_hello_is_refused() {
    let gw = TestGateway::start().await;
    let alice = bystander(&gw).await;
    let connection = raw_connection(&gw).await;
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(closed_with(&connection).await.0, ErrorCode::FRAME_TOO_LARGE);

    let connection = raw_connection(&gw).await;
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(&Frame::ListConversations { id: 1, limit: 0 }.encode())
        .await
        .unwrap();
    let (code, reason) = closed_with(&connection).await;
    assert_eq!(code, ErrorCode::PROTOCOL_VIOLATION);
    assert!(reason.contains("Hello"), "{reason}");

    let connection = raw_connection(&gw).await;
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    let hello = Frame::Hello {
        version: 99,
        token: gw.token("bob"),
        device: "x".into(),
    };
    send.write_all(&hello.encode()).await.unwrap();
    assert_eq!(
        closed_with(&connection).await.0,
        ErrorCode::UNSUPPORTED_VERSION
    );
    bystander_still_works(&alice).await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_hello_timeout() {
    let gw = TestGateway::start_with(|c| c.transport.hello_timeout_s = 1).await;
    let connection = raw_connection(&gw).await;
    let (code, _) = closed_with(&connection).await;
    assert_eq!(code, ErrorCode::PROTOCOL_VIOLATION);
}

#[tokio::test]
async fn unknown_and_malformed_frames_get_an_error_and_the_connection_goes_on() {
    let gw = TestGateway::start().await;
    let alice = bystander(&gw).await;
    let (_connection, mut send, mut recv, mut decoder) = authenticated(&gw, "alice").await;

    send.write_all(&[0, 0, 0, 3, 0x7e, 1, 2]).await.unwrap();
    let Frame::Error { id, code, .. } = next_frame(&mut recv, &mut decoder).await else {
        panic!()
    };
    assert_eq!((id, code), (0, ErrorCode::UNKNOWN_FRAME));

    // A Send cut off in the middle of its body length.
    send.write_all(&[0, 0, 0, 12, 0x15, 0, 0, 0, 9, 0, 1, b'g', 0, 0, 0, 0])
        .await
        .unwrap();
    let Frame::Error { code, message, .. } = next_frame(&mut recv, &mut decoder).await else {
        panic!()
    };
    assert_eq!(code, ErrorCode::MALFORMED_FRAME);
    assert!(message.contains("Send"), "{message}");

    // A server-only frame from a client.
    send.write_all(&Frame::Done { id: 5 }.encode())
        .await
        .unwrap();
    let Frame::Error { id, code, .. } = next_frame(&mut recv, &mut decoder).await else {
        panic!()
    };
    assert_eq!((id, code), (5, ErrorCode::PROTOCOL_VIOLATION));

    // The same connection still answers requests.
    send.write_all(&Frame::ListConversations { id: 6, limit: 0 }.encode())
        .await
        .unwrap();
    let Frame::Conversations { id, conversations } = next_frame(&mut recv, &mut decoder).await
    else {
        panic!()
    };
    assert_eq!((id, conversations.len()), (6, 1));
    bystander_still_works(&alice).await;
}

#[tokio::test]
async fn oversize_bodies_and_invalid_ids_are_refused_and_store_nothing() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &[]).await.unwrap();

    let err = alice
        .send("g", vec![b'x'; MAX_BODY_LEN + 1])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BODY_TOO_LARGE));
    let err = alice.create_group("has spaces", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::INVALID_ARGUMENT));
    let err = alice
        .add_members("g", &users(&["ok", "not ok"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::INVALID_ARGUMENT));
    assert_eq!(
        alice.members("g").await.unwrap().len(),
        1,
        "nothing was half-applied"
    );

    assert_eq!(
        alice.send("g", vec![b'x'; MAX_BODY_LEN]).await.unwrap().seq,
        1,
        "the limit itself is fine"
    );
    assert_eq!(
        alice
            .history("g", HistoryPage::After(0), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A client pipelining sends (all in one write) gets one answer each, in order: the run
/// is stored as one batch with consecutive seqs, a refused send in the middle refuses
/// only itself, and a request of another kind keeps its place.
#[tokio::test]
async fn pipelined_sends_are_answered_in_order_and_one_bad_send_spoils_nothing() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();
    let (_connection, mut send, mut recv, mut decoder) = authenticated(&gw, "alice").await;
    let message = |id: u32, group: &str| Frame::Send {
        id,
        group: group.into(),
        msg_id: format!("m{id}"),
        body: format!("body {id}").into(),
        to: vec![],
    };
    let mut burst = Vec::new();
    for id in 1..=30 {
        let frame = match id {
            10 => message(id, "not-mine"),
            20 => Frame::ListMembers {
                id,
                group: "g".into(),
                after: String::new(),
                limit: 10,
            },
            _ => message(id, "g"),
        };
        burst.extend_from_slice(&frame.encode());
    }
    send.write_all(&burst).await.unwrap();
    let mut seqs = Vec::new();
    for id in 1..=30 {
        match next_frame(&mut recv, &mut decoder).await {
            Frame::Sent { id: got, seq, .. } => {
                assert_eq!(got, id);
                seqs.push(seq);
            }
            Frame::Error { id: 10, code, .. } if id == 10 => {
                assert_eq!(code, ErrorCode::NOT_MEMBER)
            }
            Frame::Members { id: 20, .. } if id == 20 => {}
            other => panic!("answer {id}: {other:?}"),
        }
    }
    assert_eq!(
        seqs,
        (1..=28).collect::<Vec<u64>>(),
        "stored in the order sent"
    );
    let bob = gw.connect("bob").await;
    let got = texts(&receive(&bob, 28).await);
    let expected: Vec<String> = (1..=30)
        .filter(|id| *id != 10 && *id != 20)
        .map(|id| format!("body {id}"))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_bad_focus_is_refused_and_changes_nothing() {
    let gw = TestGateway::start().await;
    let alice = gw.connect("alice").await;
    alice.create_group("g", &users(&["bob"])).await.unwrap();
    let bob = gw.connect("bob").await;

    let too_many: Vec<String> = (0..=1000).map(|i| format!("g{i}")).collect();
    let err = bob.focus(&too_many).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::INVALID_ARGUMENT));
    let err = bob.focus(&users(&["g", "not a group"])).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::INVALID_ARGUMENT));

    // Still in the foreground: pushes keep coming, and the connection works.
    alice.send("g", "still here").await.unwrap();
    assert_eq!(texts(&receive(&bob, 1).await), ["still here"]);
    // Groups the user is not in are allowed (membership may change) and ignored.
    bob.focus(&users(&["g", "unknown"])).await.unwrap();
    alice.send("g", "and here").await.unwrap();
    assert_eq!(texts(&receive(&bob, 1).await), ["and here"]);
}
