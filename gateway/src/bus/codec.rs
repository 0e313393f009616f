//! The bytes of a bus event on the wire between gateways (Redis pub/sub payloads).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Event, PrivateDelivery};

const MESSAGE: u8 = 1;
const JOINED: u8 = 2;
const LEFT: u8 = 3;
const UNREAD: u8 = 4;
const UNCOUNTED: u8 = 5;

fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u32(b.len() as u32);
    buf.put_slice(b);
}

fn get_str(buf: &mut Bytes) -> Option<String> {
    let len = (buf.remaining() >= 2).then(|| buf.get_u16() as usize)?;
    (buf.remaining() >= len).then(|| String::from_utf8(buf.split_to(len).to_vec()).ok())?
}

fn get_bytes(buf: &mut Bytes) -> Option<Bytes> {
    let len = (buf.remaining() >= 4).then(|| buf.get_u32() as usize)?;
    (buf.remaining() >= len).then(|| buf.split_to(len))
}

fn get_u64(buf: &mut Bytes) -> Option<u64> {
    (buf.remaining() >= 8).then(|| buf.get_u64())
}

impl Event {
    /// The event as bytes; `None` for `Resync`, which only a bus itself raises.
    pub fn encode(&self) -> Option<Bytes> {
        let mut buf = BytesMut::new();
        match self {
            Event::Message {
                group,
                seq,
                push,
                private,
            } => {
                buf.put_u8(MESSAGE);
                put_str(&mut buf, group);
                buf.put_u64(*seq);
                put_bytes(&mut buf, push);
                match private {
                    None => buf.put_u8(0),
                    Some(p) => {
                        buf.put_u8(1);
                        put_str(&mut buf, &p.sender);
                        buf.put_u16(p.visible_to.len() as u16);
                        for user in &p.visible_to {
                            put_str(&mut buf, user);
                        }
                        put_bytes(&mut buf, &p.placeholder);
                    }
                }
            }
            Event::Joined {
                group,
                user,
                joined_seq,
            } => {
                buf.put_u8(JOINED);
                put_str(&mut buf, group);
                put_str(&mut buf, user);
                buf.put_u64(*joined_seq);
            }
            Event::Left { group, user } => {
                buf.put_u8(LEFT);
                put_str(&mut buf, group);
                put_str(&mut buf, user);
            }
            Event::Unread {
                group,
                counted,
                counts,
            } => {
                buf.put_u8(UNREAD);
                put_str(&mut buf, group);
                buf.put_u64(*counted);
                buf.put_u32(counts.len() as u32);
                for (user, count) in counts {
                    put_str(&mut buf, user);
                    buf.put_u64(*count);
                }
            }
            Event::Uncounted { groups } => {
                buf.put_u8(UNCOUNTED);
                buf.put_u32(groups.len() as u32);
                for group in groups {
                    put_str(&mut buf, group);
                }
            }
            Event::Resync => return None,
        }
        Some(buf.freeze())
    }

    /// An event from bytes, `None` if they are not one.
    pub fn decode(mut buf: Bytes) -> Option<Event> {
        let kind = (buf.remaining() >= 1).then(|| buf.get_u8())?;
        let event = match kind {
            MESSAGE => {
                let group = get_str(&mut buf)?;
                let seq = get_u64(&mut buf)?;
                let push = get_bytes(&mut buf)?;
                let private = match (buf.remaining() >= 1).then(|| buf.get_u8())? {
                    0 => None,
                    _ => {
                        let sender = get_str(&mut buf)?;
                        let count = (buf.remaining() >= 2).then(|| buf.get_u16())?;
                        let visible_to = (0..count)
                            .map(|_| get_str(&mut buf))
                            .collect::<Option<Vec<_>>>()?;
                        let placeholder = get_bytes(&mut buf)?;
                        Some(PrivateDelivery {
                            sender,
                            visible_to,
                            placeholder,
                        })
                    }
                };
                Event::Message {
                    group,
                    seq,
                    push,
                    private,
                }
            }
            JOINED => Event::Joined {
                group: get_str(&mut buf)?,
                user: get_str(&mut buf)?,
                joined_seq: get_u64(&mut buf)?,
            },
            UNREAD => {
                let group = get_str(&mut buf)?;
                let counted = get_u64(&mut buf)?;
                let n = (buf.remaining() >= 4).then(|| buf.get_u32())?;
                let counts = (0..n)
                    .map(|_| Some((get_str(&mut buf)?, get_u64(&mut buf)?)))
                    .collect::<Option<Vec<_>>>()?;
                Event::Unread {
                    group,
                    counted,
                    counts,
                }
            }
            UNCOUNTED => {
                let n = (buf.remaining() >= 4).then(|| buf.get_u32())?;
                let groups = (0..n)
                    .map(|_| get_str(&mut buf))
                    .collect::<Option<Vec<_>>>()?;
                Event::Uncounted { groups }
            }
            LEFT => Event::Left {
                group: get_str(&mut buf)?,
                user: get_str(&mut buf)?,
            },
            _ => return None,
        };
        (!buf.has_remaining()).then_some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_garbage_is_refused() {
        let events = [
            Event::Message {
                group: "g".into(),
                seq: 7,
                push: Bytes::from_static(b"push"),
                private: None,
            },
            Event::Message {
                group: "g".into(),
                seq: 8,
                push: Bytes::from_static(b"p"),
                private: Some(PrivateDelivery {
                    sender: "alice".into(),
                    visible_to: vec!["bob".into(), "carol".into()],
                    placeholder: Bytes::from_static(b"ph"),
                }),
            },
            Event::Joined {
                group: "g".into(),
                user: "dave".into(),
                joined_seq: 8,
            },
            Event::Left {
                group: "g".into(),
                user: "dave".into(),
            },
            Event::Unread {
                group: "g".into(),
                counted: 12,
                counts: vec![("bob".into(), 3), ("carol".into(), 0)],
            },
            Event::Uncounted {
                groups: vec!["g".into(), "h".into()],
            },
        ];
        for event in events {
            let decoded = Event::decode(event.encode().unwrap()).unwrap();
            assert_eq!(format!("{decoded:?}"), format!("{event:?}"));
        }
        assert!(Event::decode(Bytes::from_static(b"\x01\x00")).is_none());
        assert!(Event::decode(Bytes::from_static(b"\x09")).is_none());
        // A count list longer than the bytes that follow.
        assert!(
            Event::decode(Bytes::from_static(
                b"\x04\x00\x01g\0\0\0\0\0\0\0\x0c\xff\xff\xff\xff"
            ))
            .is_none()
        );
        assert!(Event::Resync.encode().is_none());
    }
}
