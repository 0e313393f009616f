//! # word-filter: an example chat-gateway plugin
//!
//! Keeps blocked words out of a chat. Start your own plugin by copying this crate.
//!
//! The operator configures it with JSON (both fields optional):
//!
//! ```json
//! {"words": ["darn", "heck"], "mode": "mask"}
//! ```
//!
//! - `"mask"` (the default) replaces each blocked word with asterisks: "Darn it" becomes
//!   "**** it";
//! - `"reject"` refuses the whole message.
//!
//! Words match whole and ignoring case: "darn" catches "DARN" but not "darned".

// Everything a plugin needs comes from the SDK.
use chat_plugin_sdk::{
    Changes, Hook, Host, Info, Level, Outgoing, Plugin, SendVerdict, export_plugin,
};
use serde::Deserialize;

/// The plugin itself. It holds no data: the gateway calls its hooks, which are plain
/// functions.
pub struct WordFilter;

/// The configuration, read from JSON with serde. `#[serde(default)]` fills in missing
/// fields from `Default`, so `{}` is a valid (if useless) configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The blocked words.
    pub words: Vec<String>,
    /// What to do with a message that contains one.
    pub mode: Mode,
}

/// What happens to a message with a blocked word.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Replace the word with asterisks.
    #[default]
    Mask,
    /// Refuse the message.
    Reject,
}

impl Plugin for WordFilter {
    /// Tells the gateway who we are and which hooks to call: only `on_send`.
    fn info() -> Info {
        Info {
            name: "word-filter".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::Send],
            commands: vec![],
        }
    }

    /// Called for every message before it is stored.
    fn on_send(host: &dyn Host, message: Outgoing) -> SendVerdict {
        let config: Config = match host.config_as() {
            Ok(config) => config,
            Err(e) => {
                // A broken configuration should not stop the chat: say so in the
                // gateway's log and let the message through.
                host.log(Level::Error, &e);
                return SendVerdict::Accept;
            }
        };

        // Bodies are bytes; we only look into text ones.
        let Ok(text) = std::str::from_utf8(&message.body) else {
            return SendVerdict::Accept;
        };

        match mask_words(text, &config.words) {
            None => SendVerdict::Accept,
            Some(_) if config.mode == Mode::Reject => {
                SendVerdict::Reject("message contains a blocked word".into())
            }
            Some(masked) => SendVerdict::Modify(Changes {
                body: Some(masked.into_bytes()),
                // `None`: leave who may see the message as it is.
                visible_to: None,
            }),
        }
    }
}

// Generates the WebAssembly exports that connect `WordFilter` to the gateway.
export_plugin!(WordFilter);

/// Returns `text` with every blocked word replaced by as many `*` as it has characters,
/// or `None` if it contains no blocked word.
///
/// A word is a run of letters and digits; it is blocked if it equals one of `blocked`,
/// ignoring case.
fn mask_words(text: &str, blocked: &[String]) -> Option<String> {
    let blocked: Vec<String> = blocked.iter().map(|w| w.to_lowercase()).collect();
    let mut masked = String::with_capacity(text.len());
    let mut found = false;

    // Walk through the text one run at a time: a word, then the characters up to the
    // next word (spaces, punctuation), then a word, ...
    let mut rest = text;
    while !rest.is_empty() {
        let is_word = rest.starts_with(char::is_alphanumeric);
        let run_len = rest
            .find(|c: char| c.is_alphanumeric() != is_word)
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(run_len);

        if is_word && blocked.contains(&run.to_lowercase()) {
            masked.extend(std::iter::repeat_n('*', run.chars().count()));
            found = true;
        } else {
            masked.push_str(run);
        }
        rest = tail;
    }

    found.then_some(masked)
}

// Unit tests run natively with `cargo test`: `TestHost` stands in for the gateway.
#[cfg(test)]
mod tests {
    use chat_plugin_sdk::testing::TestHost;

    use super::*;

    /// Sends `body` through the plugin configured with `config`.
    fn send(config: &str, body: &[u8]) -> SendVerdict {
        let host = TestHost::new().with_config(config);
        let message = Outgoing {
            group: "team".into(),
            sender: "ann".into(),
            body: body.to_vec(),
            to: vec![],
        };
        WordFilter::on_send(&host, message)
    }

    fn masked(text: &str) -> SendVerdict {
        SendVerdict::Modify(Changes {
            body: Some(text.into()),
            visible_to: None,
        })
    }

    const DARN: &str = r#"{"words": ["darn", "Heck"]}"#;

    #[test]
    fn masks_whole_words_ignoring_case() {
        assert_eq!(send(DARN, b"Darn it, HECK!"), masked("**** it, ****!"));
        assert_eq!(send(DARN, b"darn"), masked("****"));
        assert_eq!(send(DARN, b"darn-darn"), masked("****-****"));
    }

    #[test]
    fn leaves_other_words_alone() {
        assert_eq!(
            send(DARN, b"darned darnit undarn heckle"),
            SendVerdict::Accept
        );
        assert_eq!(send(DARN, b"all good"), SendVerdict::Accept);
        assert_eq!(send(DARN, b""), SendVerdict::Accept);
    }

    #[test]
    fn masks_with_one_asterisk_per_character() {
        let config = r#"{"words": ["mist", "ÄRGER"]}"#;
        assert_eq!(
            send(config, "So ein Ärger, Mist.".as_bytes()),
            masked("So ein *****, ****.")
        );
    }

    #[test]
    fn reject_mode_refuses_the_message() {
        let config = r#"{"words": ["darn"], "mode": "reject"}"#;
        assert_eq!(
            send(config, b"oh DARN"),
            SendVerdict::Reject("message contains a blocked word".into())
        );
        assert_eq!(send(config, b"oh dear"), SendVerdict::Accept);
    }

    #[test]
    fn non_text_bodies_pass_untouched() {
        assert_eq!(send(DARN, b"darn \xff\xfe"), SendVerdict::Accept);
    }

    #[test]
    fn empty_config_blocks_nothing() {
        assert_eq!(send("{}", b"darn"), SendVerdict::Accept);
    }

    #[test]
    fn bad_config_is_logged_and_lets_messages_through() {
        let host = TestHost::new().with_config(r#"{"mode": "shout"}"#);
        let message = Outgoing {
            group: "team".into(),
            sender: "ann".into(),
            body: b"darn".to_vec(),
            to: vec![],
        };
        assert_eq!(WordFilter::on_send(&host, message), SendVerdict::Accept);
        assert_eq!(host.logs().len(), 1);
        assert_eq!(host.logs()[0].0, Level::Error);
    }
}
