//! Private messages: a message sent with `chat send --to USER...` is visible only to the
//! addressed members (and the sender).
//!
//! Configuration (JSON, every field optional):
//!
//! ```json
//! {"max_recipients": 100, "allowed_senders": null}
//! ```
//!
//! `allowed_senders`: `null` lets everyone send private messages, a list only those users.

use chat_plugin_sdk::{
    Changes, Hook, Host, Info, Level, Outgoing, Plugin, SendVerdict, export_plugin,
};
use serde::Deserialize;

/// The plugin.
pub struct PrivateMessages;

/// The plugin's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Most distinct recipients one private message may have.
    pub max_recipients: usize,
    /// Who may send private messages; `None` for everyone.
    pub allowed_senders: Option<Vec<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_recipients: 100,
            allowed_senders: None,
        }
    }
}

impl Plugin for PrivateMessages {
    fn info() -> Info {
        Info {
            name: "private-messages".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::Send],
            commands: vec![],
        }
    }

    fn on_send(host: &dyn Host, message: Outgoing) -> SendVerdict {
        if message.to.is_empty() {
            return SendVerdict::Accept;
        }
        let config: Config = match host.config_as() {
            Ok(config) => config,
            Err(e) => {
                // Fail closed: a private message must not go out to the whole group
                // because the operator mistyped the configuration.
                host.log(Level::Error, &e);
                return SendVerdict::Reject("private messages are misconfigured".into());
            }
        };
        if let Some(allowed) = &config.allowed_senders
            && !allowed.contains(&message.sender)
        {
            return SendVerdict::Reject("you may not send private messages".into());
        }

        let mut to = message.to;
        to.sort_unstable();
        to.dedup();
        if to.len() > config.max_recipients {
            return SendVerdict::Reject(format!("at most {} recipients", config.max_recipients));
        }
        SendVerdict::Modify(Changes {
            body: None,
            visible_to: Some(to),
        })
    }
}

export_plugin!(PrivateMessages);

#[cfg(test)]
mod tests {
    use chat_plugin_sdk::testing::TestHost;

    use super::*;

    fn send(host: &TestHost, sender: &str, to: &[&str]) -> SendVerdict {
        let message = Outgoing {
            group: "team".into(),
            sender: sender.into(),
            body: b"psst".to_vec(),
            to: to.iter().map(|u| u.to_string()).collect(),
        };
        PrivateMessages::on_send(host, message)
    }

    fn visible_to(users: &[&str]) -> SendVerdict {
        SendVerdict::Modify(Changes {
            body: None,
            visible_to: Some(users.iter().map(|u| u.to_string()).collect()),
        })
    }

    #[test]
    fn describes_itself() {
        let info = PrivateMessages::info();
        assert_eq!(info.name, "private-messages");
        assert_eq!(info.hooks, [Hook::Send]);
        assert!(info.commands.is_empty());
    }

    #[test]
    fn group_messages_pass_untouched() {
        // Even with a configuration that would refuse this sender a private message.
        let host = TestHost::new().with_config(r#"{"allowed_senders": []}"#);
        assert_eq!(send(&host, "ann", &[]), SendVerdict::Accept);
    }

    #[test]
    fn private_messages_are_visible_to_the_deduplicated_recipients() {
        let host = TestHost::new();
        assert_eq!(send(&host, "ann", &["bob"]), visible_to(&["bob"]));
        assert_eq!(
            send(&host, "ann", &["cy", "bob", "cy", "bob"]),
            visible_to(&["bob", "cy"])
        );
    }

    #[test]
    fn only_allowed_senders_may_send_privately() {
        let host = TestHost::new().with_config(r#"{"allowed_senders": ["ann", "admin"]}"#);
        assert_eq!(send(&host, "ann", &["bob"]), visible_to(&["bob"]));
        assert_eq!(
            send(&host, "bob", &["ann"]),
            SendVerdict::Reject("you may not send private messages".into())
        );

        let host = TestHost::new().with_config(r#"{"allowed_senders": null}"#);
        assert_eq!(send(&host, "bob", &["ann"]), visible_to(&["ann"]));
    }

    #[test]
    fn recipients_are_limited_after_deduplication() {
        let host = TestHost::new().with_config(r#"{"max_recipients": 2}"#);
        assert_eq!(
            send(&host, "ann", &["bob", "cy", "bob"]),
            visible_to(&["bob", "cy"])
        );
        assert_eq!(
            send(&host, "ann", &["bob", "cy", "dee"]),
            SendVerdict::Reject("at most 2 recipients".into())
        );
    }

    #[test]
    fn default_limit_is_100() {
        let host = TestHost::new();
        let hundred: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
        let mut to: Vec<&str> = hundred.iter().map(String::as_str).collect();
        assert!(matches!(send(&host, "ann", &to), SendVerdict::Modify(_)));
        to.push("one-too-many");
        assert_eq!(
            send(&host, "ann", &to),
            SendVerdict::Reject("at most 100 recipients".into())
        );
    }

    #[test]
    fn bad_configuration_rejects_private_messages_and_logs() {
        let host = TestHost::new().with_config(r#"{"max_recipients": "lots"}"#);
        assert_eq!(
            send(&host, "ann", &["bob"]),
            SendVerdict::Reject("private messages are misconfigured".into())
        );
        let logs = host.logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].0, Level::Error);
        assert!(
            logs[0].1.contains("invalid plugin configuration"),
            "{logs:?}"
        );
    }
}
