//! Drops pushes the application has already seen.
//!
//! Delivery is at-least-once: the gateway retransmits a push whose ACK it did not get
//! in time. It sends each group's pushes in increasing seq order, so remembering the
//! last seq surfaced per group is enough to never surface one twice.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub(crate) struct Dedup {
    last_surfaced: HashMap<String, u64>,
}

impl Dedup {
    /// Whether `(group, seq)` was already handed to the application.
    pub(crate) fn is_duplicate(&self, group: &str, seq: u64) -> bool {
        self.last_surfaced
            .get(group)
            .is_some_and(|&last| seq <= last)
    }

    /// Marks `(group, seq)` as handed to the application; false if it is a duplicate
    /// (and so must be dropped, though still acknowledged).
    pub(crate) fn surface(&mut self, group: &str, seq: u64) -> bool {
        match self.last_surfaced.get_mut(group) {
            Some(last) if seq <= *last => false,
            Some(last) => {
                *last = seq;
                true
            }
            None => {
                self.last_surfaced.insert(group.to_owned(), seq);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_push_of_a_group_is_new() {
        let mut d = Dedup::default();
        assert!(!d.is_duplicate("g", 1));
        assert!(d.surface("g", 1));
        assert!(d.is_duplicate("g", 1));
    }

    #[test]
    fn repeats_and_older_seqs_are_duplicates() {
        let mut d = Dedup::default();
        assert!(d.surface("g", 5));
        assert!(!d.surface("g", 5));
        assert!(!d.surface("g", 3));
        assert!(d.is_duplicate("g", 4));
        assert!(!d.is_duplicate("g", 6));
        // A gap is fine: seqs are group-wide, a member may not see every one.
        assert!(d.surface("g", 9));
        assert!(!d.surface("g", 6));
    }

    #[test]
    fn groups_are_independent() {
        let mut d = Dedup::default();
        assert!(d.surface("a", 10));
        assert!(d.surface("b", 1));
        assert!(!d.is_duplicate("b", 2));
        assert!(d.is_duplicate("a", 10));
        assert!(!d.surface("a", 2));
        assert!(d.surface("b", 2));
    }
}
