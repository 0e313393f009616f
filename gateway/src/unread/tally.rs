//! The Aggregator: a batch of a group's messages and the group's members in, one `+k` per
//! member out. No I/O.

use std::collections::HashMap;

use crate::store::{Membership, StoredMessage};

/// What counting needs of a message: who sent it and who may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub seq: u64,
    pub sender: String,
    /// `None`: the whole group.
    pub visible_to: Option<Vec<String>>,
}

impl From<&StoredMessage> for Counted {
    fn from(m: &StoredMessage) -> Self {
        Counted {
            seq: m.seq,
            sender: m.sender.clone(),
            visible_to: m.visible_to.clone(),
        }
    }
}

/// For each member, how many messages of `batch` count as unread for them: those after
/// their join watermark that they did not send and may see. Members with nothing to add
/// are left out. `batch` must be sorted by seq.
pub fn increments(batch: &[Counted], members: &[Membership]) -> Vec<(String, u64)> {
    debug_assert!(batch.windows(2).all(|w| w[0].seq < w[1].seq));
    let mut public = Vec::new();
    // Seqs each user must not count (their own public messages) or may count besides
    // the public ones (private messages to them, not from them).
    let mut own: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut private_to: HashMap<&str, Vec<u64>> = HashMap::new();
    for m in batch {
        match &m.visible_to {
            None => {
                public.push(m.seq);
                own.entry(m.sender.as_str()).or_default().push(m.seq);
            }
            Some(recipients) => {
                for user in recipients.iter().filter(|u| **u != m.sender) {
                    private_to.entry(user.as_str()).or_default().push(m.seq);
                }
            }
        }
    }
    // How many of the ascending `seqs` come after `joined`.
    let after =
        |seqs: &[u64], joined: u64| (seqs.len() - seqs.partition_point(|s| *s <= joined)) as u64;
    members
        .iter()
        .filter_map(|member| {
            let user = member.user.as_str();
            let joined = member.joined_seq;
            let mut k = after(&public, joined);
            if let Some(seqs) = own.get(user) {
                k -= after(seqs, joined);
            }
            if let Some(seqs) = private_to.get(user) {
                k += after(seqs, joined);
            }
            (k > 0).then(|| (member.user.clone(), k))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: &str, joined_seq: u64) -> Membership {
        Membership {
            group: "g".into(),
            user: user.into(),
            owner: false,
            joined_seq,
        }
    }

    fn public(seq: u64, sender: &str) -> Counted {
        Counted {
            seq,
            sender: sender.into(),
            visible_to: None,
        }
    }

    fn private(seq: u64, sender: &str, to: &[&str]) -> Counted {
        Counted {
            seq,
            sender: sender.into(),
            visible_to: Some(to.iter().map(|u| u.to_string()).collect()),
        }
    }

    #[test]
    fn each_member_gets_one_increment_for_the_batch_less_their_own() {
        let batch = [public(1, "alice"), public(2, "bob"), public(3, "alice")];
        let members = [member("alice", 0), member("bob", 0), member("carol", 0)];
        assert_eq!(
            increments(&batch, &members),
            [("alice".into(), 1), ("bob".into(), 2), ("carol".into(), 3)]
        );
    }

    #[test]
    fn nothing_at_or_before_the_join_watermark_counts() {
        let batch = [public(4, "alice"), public(5, "alice"), public(6, "bob")];
        let members = [member("late", 5), member("bob", 4), member("later", 6)];
        assert_eq!(
            increments(&batch, &members),
            [("late".into(), 1), ("bob".into(), 1)]
        );
    }

    #[test]
    fn private_messages_count_for_their_recipients_only() {
        let batch = [
            private(1, "alice", &["bob"]),
            public(2, "carol"),
            private(3, "bob", &["bob", "carol"]),
        ];
        let members = [member("alice", 0), member("bob", 0), member("carol", 0)];
        assert_eq!(
            increments(&batch, &members),
            [("alice".into(), 1), ("bob".into(), 2), ("carol".into(), 1)]
        );
    }
}
