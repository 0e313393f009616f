use bytes::Bytes;

use crate::*;

fn message(seq: u64) -> Message {
    Message {
        group: "g1".into(),
        seq,
        sender: "alice".into(),
        ts_ms: 1_764_000_000_000 + seq,
        flags: 0,
        body: Bytes::from(format!("hello {seq}")),
    }
}

fn every_frame() -> Vec<Frame> {
    vec![
        Frame::Hello {
            version: 1,
            token: "tok".into(),
            device: "phone".into(),
        },
        Frame::Welcome {
            version: 1,
            user: "alice".into(),
            ack: AckPolicy {
                max_delay_ms: 5000,
                max_batch: 64,
                retransmit_ms: 15_000,
            },
            catch_up_ack: AckPolicy {
                max_delay_ms: 200,
                max_batch: 256,
                retransmit_ms: 10_000,
            },
            max_frame_len: MAX_FRAME_LEN as u32,
        },
        Frame::CreateGroup {
            id: 1,
            group: "g1".into(),
            members: vec!["bob".into(), "carol".into()],
        },
        Frame::AddMembers {
            id: 2,
            group: "g1".into(),
            users: vec!["dave".into()],
        },
        Frame::RemoveMembers {
            id: 3,
            group: "g1".into(),
            users: vec![],
        },
        Frame::LeaveGroup {
            id: 4,
            group: "g1".into(),
        },
        Frame::ListMembers {
            id: 5,
            group: "g1".into(),
            after: "bob".into(),
            limit: 100,
        },
        Frame::Send {
            id: 6,
            group: "g1".into(),
            msg_id: "m-1".into(),
            body: Bytes::from_static(b"hi"),
            to: vec!["bob".into()],
        },
        Frame::Command {
            id: 16,
            group: "g1".into(),
            name: "delete".into(),
            args: vec!["7".into()],
        },
        Frame::CommandResult {
            id: 16,
            text: "deleted 7 for you".into(),
        },
        Frame::History {
            id: 7,
            group: "g1".into(),
            page: HistoryPage::Before(u64::MAX),
            limit: 50,
        },
        Frame::History {
            id: 8,
            group: "g1".into(),
            page: HistoryPage::After(3),
            limit: 50,
        },
        Frame::ListConversations { id: 9, limit: 100 },
        Frame::Ack {
            ranges: vec![AckRange {
                group: "g1".into(),
                first: 1,
                last: 9,
            }],
        },
        Frame::Done { id: 10 },
        Frame::Members {
            id: 11,
            members: vec![
                MemberInfo {
                    user: "alice".into(),
                    role: Role::Owner,
                    joined_seq: 0,
                },
                MemberInfo {
                    user: "bob".into(),
                    role: Role::Member,
                    joined_seq: 7,
                },
            ],
        },
        Frame::Sent {
            id: 12,
            group: "g1".into(),
            seq: 8,
            ts_ms: 99,
            duplicate: true,
        },
        Frame::Messages {
            id: 13,
            messages: vec![message(1), message(2)],
        },
        Frame::Conversations {
            id: 14,
            conversations: vec![Conversation {
                group: "g1".into(),
                head_seq: 3,
                last_ts_ms: 5,
            }],
        },
        Frame::Error {
            id: 15,
            code: ErrorCode::NOT_MEMBER,
            message: "not a member of g1".into(),
        },
        Frame::Push {
            message: message(3),
        },
        Frame::GetUnread { id: 16 },
        Frame::MarkRead {
            id: 17,
            group: "g1".into(),
            seq: 7,
        },
        Frame::Unread {
            id: 18,
            total: 12,
            groups: vec![
                UnreadCount {
                    group: "g1".into(),
                    count: 5,
                },
                UnreadCount {
                    group: "g2".into(),
                    count: 7,
                },
            ],
        },
        Frame::UnreadChanged {
            groups: vec![UnreadCount {
                group: "g2".into(),
                count: 0,
            }],
        },
        Frame::Skipped {
            group: "g2".into(),
            first: 4,
            last: 1003,
        },
        Frame::GoAway {
            deadline_ms: 30_000,
            server: "10.0.0.7:4433".into(),
        },
        Frame::Focus {
            id: 19,
            groups: vec!["g1".into(), "g3".into()],
        },
        Frame::Activity {
            groups: vec![GroupActivity {
                group: "g2".into(),
                seq: 1_000_000,
                pending: 17,
            }],
        },
    ]
}

#[test]
fn every_frame_round_trips_through_the_decoder() {
    let frames = every_frame();
    let mut decoder = FrameDecoder::new();
    for frame in &frames {
        decoder.extend(&frame.encode());
    }
    for frame in &frames {
        assert_eq!(decoder.next_frame().unwrap().as_ref(), Some(frame));
    }
    assert_eq!(decoder.next_frame().unwrap(), None);
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn frames_arriving_one_byte_at_a_time_decode_whole() {
    let frame = Frame::Push {
        message: message(42),
    };
    let bytes = frame.encode();
    let mut decoder = FrameDecoder::new();
    for (i, byte) in bytes.iter().enumerate() {
        decoder.extend(&[*byte]);
        let got = decoder.next_frame().unwrap();
        if i + 1 < bytes.len() {
            assert_eq!(got, None, "frame complete too early at byte {i}");
        } else {
            assert_eq!(got, Some(frame.clone()));
        }
    }
}

#[test]
fn the_push_wire_layout_is_the_documented_one() {
    // docs/protocol.md, "Push" example.
    let push = encode_push(&Message {
        group: "g1".into(),
        seq: 7,
        sender: "bob".into(),
        ts_ms: 1_700_000_000_000,
        flags: 0,
        body: Bytes::from_static(b"hi"),
    });
    let expected: &[u8] = &[
        0x00, 0x00, 0x00, 0x21, // length 33
        0x40, // Push
        0x00, 0x02, b'g', b'1', // group
        0, 0, 0, 0, 0, 0, 0, 7, // seq
        0x00, 0x03, b'b', b'o', b'b', // sender
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // ts_ms
        0x00, // flags
        0x00, 0x00, 0x00, 0x02, b'h', b'i', // body
    ];
    assert_eq!(&push[..], expected);
}

#[test]
fn the_welcome_wire_layout_is_the_documented_one() {
    // docs/protocol.md, the handshake example: the default plugins' policies.
    let welcome = every_frame().swap_remove(1);
    assert!(matches!(welcome, Frame::Welcome { .. }));
    let expected: &[u8] = &[
        0x00, 0x00, 0x00, 0x22, // length 34
        0x02, // Welcome
        0x00, 0x01, // version
        0x00, 0x05, b'a', b'l', b'i', b'c', b'e', // user
        0x00, 0x00, 0x13, 0x88, // ack.max_delay_ms 5000
        0x00, 0x40, // ack.max_batch 64
        0x00, 0x00, 0x3a, 0x98, // ack.retransmit_ms 15000
        0x00, 0x00, 0x00, 0xc8, // catch_up_ack.max_delay_ms 200
        0x01, 0x00, // catch_up_ack.max_batch 256
        0x00, 0x00, 0x27, 0x10, // catch_up_ack.retransmit_ms 10000
        0x00, 0x04, 0x00, 0x00, // max_frame_len 262144
    ];
    assert_eq!(&welcome.encode()[..], expected);
}

#[test]
fn focus_and_activity_wire_layouts_are_the_documented_ones() {
    // docs/protocol.md, "Focus" and "Activity" examples.
    let focus = Frame::Focus {
        id: 5,
        groups: vec!["g1".into()],
    };
    let expected: &[u8] = &[
        0, 0, 0, 0x0b, 0x1b, 0, 0, 0, 5, 0, 1, 0, 2, b'g', b'1', //
    ];
    assert_eq!(&focus.encode()[..], expected);
    let activity = Frame::Activity {
        groups: vec![GroupActivity {
            group: "g1".into(),
            seq: 9,
            pending: 2,
        }],
    };
    let expected: &[u8] = &[
        0, 0, 0, 0x17, 0x44, 0, 1, 0, 2, b'g', b'1', 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 2,
    ];
    assert_eq!(&activity.encode()[..], expected);
}

#[test]
fn an_oversize_length_prefix_is_refused_before_buffering_the_body() {
    let mut decoder = FrameDecoder::new();
    decoder.extend(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes());
    assert_eq!(
        decoder.next_frame(),
        Err(DecodeError::TooLarge(MAX_FRAME_LEN + 1))
    );
}

#[test]
fn garbage_bytes_are_an_error_not_a_panic() {
    let mut decoder = FrameDecoder::new();
    decoder.extend(b"GET / HTTP/1.1\r\n\r\n");
    assert!(matches!(
        decoder.next_frame(),
        Err(DecodeError::TooLarge(_))
    ));

    let mut decoder = FrameDecoder::new();
    decoder.extend(&[0, 0, 0, 0]);
    assert_eq!(decoder.next_frame(), Err(DecodeError::Empty));
}

#[test]
fn an_unknown_frame_type_is_skipped_and_decoding_goes_on() {
    let mut decoder = FrameDecoder::new();
    decoder.extend(&[0, 0, 0, 3, 0x7e, 1, 2]);
    decoder.extend(&Frame::Done { id: 1 }.encode());
    assert_eq!(decoder.next_frame(), Err(DecodeError::UnknownType(0x7e)));
    assert_eq!(decoder.next_frame(), Ok(Some(Frame::Done { id: 1 })));
}

#[test]
fn truncated_and_overlong_payloads_are_malformed() {
    let whole = Frame::Sent {
        id: 1,
        group: "g".into(),
        seq: 1,
        ts_ms: 1,
        duplicate: false,
    }
    .encode();
    // Cut the last byte off the payload but keep the length honest.
    let mut cut = whole[4..whole.len() - 1].to_vec();
    let mut framed = ((cut.len()) as u32).to_be_bytes().to_vec();
    framed.append(&mut cut);
    let mut decoder = FrameDecoder::new();
    decoder.extend(&framed);
    assert!(matches!(
        decoder.next_frame(),
        Err(DecodeError::Malformed { frame: "Sent", .. })
    ));

    let mut long = whole[4..].to_vec();
    long.push(0);
    let mut framed = (long.len() as u32).to_be_bytes().to_vec();
    framed.extend(long);
    decoder.extend(&framed);
    assert!(matches!(
        decoder.next_frame(),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn a_lying_list_count_does_not_allocate_or_panic() {
    // CreateGroup claiming 9,999 members with no bytes behind the count.
    let payload = [0x10, 0, 0, 0, 1, 0, 1, b'g', 0x27, 0x0f];
    let mut framed = (payload.len() as u32).to_be_bytes().to_vec();
    framed.extend(payload);
    let mut decoder = FrameDecoder::new();
    decoder.extend(&framed);
    assert!(matches!(
        decoder.next_frame(),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn invalid_utf8_in_a_string_is_malformed() {
    let payload = [0x13, 0, 0, 0, 1, 0, 2, 0xff, 0xfe];
    let mut framed = (payload.len() as u32).to_be_bytes().to_vec();
    framed.extend(payload);
    let mut decoder = FrameDecoder::new();
    decoder.extend(&framed);
    assert!(matches!(
        decoder.next_frame(),
        Err(DecodeError::Malformed {
            frame: "LeaveGroup",
            ..
        })
    ));
}

#[test]
fn ids_are_checked() {
    assert!(valid_id("alice"));
    assert!(valid_id("team-42.chat_room:x@y"));
    assert!(!valid_id(""));
    assert!(!valid_id("has space"));
    assert!(!valid_id(&"x".repeat(MAX_ID_LEN + 1)));
    assert!(valid_user_id("alice"));
    assert!(
        !valid_user_id("plugin:notifier"),
        "users cannot pose as plugins"
    );
}

#[test]
fn error_codes_have_stable_names() {
    assert_eq!(ErrorCode::TOKEN_EXPIRED.name(), "token_expired");
    assert_eq!(ErrorCode(999).name(), "unknown");
    assert!(ErrorCode::UNAVAILABLE.is_retryable());
    assert!(!ErrorCode::NOT_MEMBER.is_retryable());
}

#[test]
fn an_overlong_string_is_cut_at_a_character_boundary() {
    let text = "é".repeat(40_000); // 80,000 bytes
    let frame = Frame::CommandResult { id: 1, text };
    let mut decoder = FrameDecoder::new();
    decoder.extend(&frame.encode());
    let Some(Frame::CommandResult { text, .. }) = decoder.next_frame().unwrap() else {
        panic!("not decoded")
    };
    assert_eq!(text.len(), 65_534);
    assert!(text.chars().all(|c| c == 'é'));
}
