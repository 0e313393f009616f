//! A well-behaved minimal plugin: accepts every message and hides nothing. The gateway's
//! tests use it to measure the overhead of a hook call.

use chat_plugin_sdk::{Hook, Info, Plugin, export_plugin};

struct AcceptsAll;

impl Plugin for AcceptsAll {
    fn info() -> Info {
        Info {
            name: "accepts-all".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::Send, Hook::Read],
            commands: vec![],
        }
    }
    // `on_send` (accept) and `filter_read` (hide nothing) keep the SDK's default bodies.
}

export_plugin!(AcceptsAll);
