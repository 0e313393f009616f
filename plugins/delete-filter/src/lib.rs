//! The `delete` command: `chat delete GROUP SEQ` hides message SEQ of GROUP from the
//! user who runs it (and from nobody else) when they read history or catch up.
//!
//! The deleted seqs of a user in a group live in ONE key of the plugin's store,
//! `deleted/{user}/{group}` (ids cannot contain `/`, so the key is unambiguous), as the
//! sorted, deduplicated seqs, each a big-endian `u64`. Reading a page therefore costs one
//! `kv_get`, however many messages it holds.

use chat_plugin_sdk::{Hook, Host, Info, Plugin, Stored, export_plugin};

/// The plugin.
pub struct DeleteFilter;

/// The answer to a malformed `delete` command.
pub const USAGE: &str = "usage: delete GROUP SEQ";

impl Plugin for DeleteFilter {
    fn info() -> Info {
        Info {
            name: "delete-filter".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::Command, Hook::Read],
            commands: vec!["delete".into()],
        }
    }

    fn on_command(
        host: &dyn Host,
        user: &str,
        group: &str,
        name: &str,
        args: &[String],
    ) -> Result<String, String> {
        if name != "delete" {
            return Err(format!("unknown command {name}"));
        }
        let seq = match args {
            [seq] => seq.parse::<u64>().ok().filter(|&seq| seq >= 1),
            _ => None,
        }
        .ok_or_else(|| USAGE.to_string())?;

        let key = key(user, group);
        let mut seqs = host
            .kv_get(&key)
            .map(|bytes| decode(&bytes))
            .unwrap_or_default();
        if let Err(at) = seqs.binary_search(&seq) {
            seqs.insert(at, seq);
            host.kv_set(&key, &encode(&seqs));
        }
        Ok(format!("deleted {seq} for you"))
    }

    fn filter_read(host: &dyn Host, user: &str, group: &str, messages: &[Stored]) -> Vec<u64> {
        let Some(bytes) = host.kv_get(&key(user, group)) else {
            return Vec::new();
        };
        let deleted = decode(&bytes);
        messages
            .iter()
            .map(|m| m.seq)
            .filter(|seq| deleted.binary_search(seq).is_ok())
            .collect()
    }
}

export_plugin!(DeleteFilter);

/// The store key holding `user`'s deleted seqs in `group`.
fn key(user: &str, group: &str) -> String {
    format!("deleted/{user}/{group}")
}

fn encode(seqs: &[u64]) -> Vec<u8> {
    seqs.iter().flat_map(|seq| seq.to_be_bytes()).collect()
}

/// Decodes a stored value, sorting and deduplicating it in case it was written otherwise;
/// trailing bytes that do not make a whole `u64` are ignored.
fn decode(bytes: &[u8]) -> Vec<u64> {
    let mut seqs: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|chunk| u64::from_be_bytes(chunk.try_into().expect("chunks of 8 bytes")))
        .collect();
    if !seqs.is_sorted_by(|a, b| a < b) {
        seqs.sort_unstable();
        seqs.dedup();
    }
    seqs
}

#[cfg(test)]
mod tests {
    use chat_plugin_sdk::testing::TestHost;

    use super::*;

    fn delete(host: &TestHost, user: &str, group: &str, args: &[&str]) -> Result<String, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        DeleteFilter::on_command(host, user, group, "delete", &args)
    }

    fn page(seqs: impl IntoIterator<Item = u64>) -> Vec<Stored> {
        seqs.into_iter()
            .map(|seq| Stored {
                seq,
                sender: "ann".into(),
                ts_ms: 1000 + seq,
                body: b"hi".to_vec(),
            })
            .collect()
    }

    fn hidden(
        host: &TestHost,
        user: &str,
        group: &str,
        seqs: impl IntoIterator<Item = u64>,
    ) -> Vec<u64> {
        DeleteFilter::filter_read(host, user, group, &page(seqs))
    }

    #[test]
    fn describes_itself() {
        let info = DeleteFilter::info();
        assert_eq!(info.name, "delete-filter");
        assert_eq!(info.hooks, [Hook::Command, Hook::Read]);
        assert_eq!(info.commands, ["delete"]);
    }

    #[test]
    fn delete_hides_only_for_that_user_and_group() {
        let host = TestHost::new();
        assert_eq!(
            delete(&host, "bob", "team", &["3"]),
            Ok("deleted 3 for you".into())
        );
        assert_eq!(
            delete(&host, "bob", "team", &["1"]),
            Ok("deleted 1 for you".into())
        );

        assert_eq!(hidden(&host, "bob", "team", 1..=5), [1, 3]);
        assert_eq!(hidden(&host, "bob", "team", 4..=9), Vec::<u64>::new());
        assert_eq!(hidden(&host, "ann", "team", 1..=5), Vec::<u64>::new());
        assert_eq!(hidden(&host, "bob", "other", 1..=5), Vec::<u64>::new());
    }

    #[test]
    fn one_key_per_user_and_group_sorted_and_compact() {
        let host = TestHost::new();
        for seq in ["9", "2", "300", "2"] {
            delete(&host, "bob", "team", &[seq]).unwrap();
        }
        delete(&host, "bob", "other", &["1"]).unwrap();

        let kv = host.kv();
        assert_eq!(kv.len(), 2);
        let expected: Vec<u8> = [2u64, 9, 300]
            .iter()
            .flat_map(|s| s.to_be_bytes())
            .collect();
        assert_eq!(kv["deleted/bob/team"], expected);
        assert_eq!(kv["deleted/bob/other"], 1u64.to_be_bytes());
    }

    #[test]
    fn filter_read_reads_the_store_once_per_page() {
        let host = TestHost::new();
        delete(&host, "bob", "team", &["2"]).unwrap();
        let before = host.kv_get_calls();
        assert_eq!(hidden(&host, "bob", "team", 1..=500), [2]);
        assert_eq!(host.kv_get_calls(), before + 1);
    }

    #[test]
    fn repeating_a_delete_is_idempotent() {
        let host = TestHost::new();
        assert_eq!(
            delete(&host, "bob", "team", &["7"]),
            Ok("deleted 7 for you".into())
        );
        let stored = host.kv();
        assert_eq!(
            delete(&host, "bob", "team", &["7"]),
            Ok("deleted 7 for you".into())
        );
        assert_eq!(host.kv(), stored);
        assert_eq!(hidden(&host, "bob", "team", [6, 7, 8]), [7]);
    }

    #[test]
    fn bad_arguments_are_refused_and_store_nothing() {
        let host = TestHost::new();
        for args in [
            &[][..],
            &["0"],
            &["-1"],
            &["x"],
            &["1.5"],
            &["1", "2"],
            &[""],
            &["18446744073709551616"],
        ] {
            assert_eq!(
                delete(&host, "bob", "team", args),
                Err(USAGE.into()),
                "{args:?}"
            );
        }
        assert!(host.kv().is_empty());
        assert_eq!(
            delete(&host, "bob", "team", &["18446744073709551615"]),
            Ok("deleted 18446744073709551615 for you".into())
        );
    }

    #[test]
    fn other_commands_are_unknown() {
        let host = TestHost::new();
        let err =
            DeleteFilter::on_command(&host, "bob", "team", "undelete", &["1".into()]).unwrap_err();
        assert_eq!(err, "unknown command undelete");
    }

    #[test]
    fn decode_tolerates_unsorted_and_partial_values() {
        let mut bytes: Vec<u8> = [5u64, 1, 5].iter().flat_map(|s| s.to_be_bytes()).collect();
        bytes.push(0xff);
        assert_eq!(decode(&bytes), [1, 5]);
        assert_eq!(decode(&[]), Vec::<u64>::new());
    }
}
