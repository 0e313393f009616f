//! Notice test: the `ping` command sends the caller a private notice through `host.notify`
//! and counts pings in the key-value store.

use chat_plugin_sdk::{Hook, Host, Info, Plugin, export_plugin};

struct Notifier;

impl Plugin for Notifier {
    fn info() -> Info {
        Info {
            name: "notifier".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::Command],
            commands: vec!["ping".into()],
        }
    }

    fn on_command(
        host: &dyn Host,
        user: &str,
        group: &str,
        _name: &str,
        _args: &[String],
    ) -> Result<String, String> {
        let count = host
            .kv_get("pings")
            .and_then(|v| v.try_into().ok())
            .map_or(0, u64::from_be_bytes)
            + 1;
        host.kv_set("pings", &count.to_be_bytes());
        let seq = host.notify(group, user, &format!("pong #{count}"))?;
        Ok(format!("sent notice {seq}"))
    }
}

export_plugin!(Notifier);
