//! What one user sees of a stored message: the message, or a bodiless placeholder with its
//! seq when it is private to others or hidden by a read plugin. Used by history and
//! catch-up alike; live pushes make the same choice per message in `Publisher`.

use std::collections::HashSet;

use bytes::Bytes;
use chat_protocol::Message;

use crate::store::StoredMessage;

/// A placeholder for (`group`, `seq`): no sender, no body, `FLAG_HIDDEN`.
pub fn placeholder(group: &str, seq: u64, ts_ms: u64, extra_flags: u8) -> Message {
    Message {
        group: group.to_owned(),
        seq,
        sender: String::new(),
        ts_ms,
        flags: Message::FLAG_HIDDEN | extra_flags,
        body: Bytes::new(),
    }
}

/// `message` as `user` may see it, given the seqs read plugins hide from them.
pub fn render(
    user: &str,
    message: StoredMessage,
    hidden: &HashSet<u64>,
    extra_flags: u8,
) -> Message {
    if !message.visible_to(user) || hidden.contains(&message.seq) {
        return placeholder(&message.group, message.seq, message.ts_ms, extra_flags);
    }
    let private = if message.visible_to.is_some() {
        Message::FLAG_PRIVATE
    } else {
        0
    };
    Message {
        group: message.group,
        seq: message.seq,
        sender: message.sender,
        ts_ms: message.ts_ms,
        flags: private | extra_flags,
        body: message.body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(visible_to: Option<Vec<&str>>) -> StoredMessage {
        StoredMessage {
            group: "g".into(),
            seq: 3,
            sender: "alice".into(),
            ts_ms: 9,
            body: Bytes::from_static(b"secret"),
            visible_to: visible_to.map(|v| v.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn private_messages_reach_their_recipients_and_sender_only() {
        let none = HashSet::new();
        let m = stored(Some(vec!["bob"]));
        assert_eq!(render("bob", m.clone(), &none, 0).body, "secret");
        assert_eq!(
            render("bob", m.clone(), &none, 0).flags,
            Message::FLAG_PRIVATE
        );
        assert_eq!(render("alice", m.clone(), &none, 0).body, "secret");
        let carol = render("carol", m, &none, 0);
        assert!(carol.is_hidden());
        assert_eq!(
            (carol.seq, carol.sender.as_str(), carol.body.len()),
            (3, "", 0)
        );
    }

    #[test]
    fn hidden_seqs_become_placeholders_that_keep_their_seq() {
        let hidden = HashSet::from([3]);
        let shown = render("bob", stored(None), &hidden, Message::FLAG_CATCH_UP);
        assert!(shown.is_hidden());
        assert_eq!(shown.flags & Message::FLAG_CATCH_UP, Message::FLAG_CATCH_UP);
        assert_eq!(shown.seq, 3);
    }
}
