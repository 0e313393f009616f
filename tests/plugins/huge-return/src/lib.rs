//! Fault test: `on_send` returns a body of 8 MiB, far above the 16 KiB body limit.

use chat_plugin_sdk::{Changes, Hook, Host, Info, Outgoing, Plugin, SendVerdict, export_plugin};

struct HugeReturn;

/// The size of the body `on_send` returns.
const BODY_LEN: usize = 8 << 20;

impl Plugin for HugeReturn {
    fn info() -> Info {
        Info {
            name: "huge-return".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::Send],
            commands: vec![],
        }
    }

    fn on_send(_host: &dyn Host, _message: Outgoing) -> SendVerdict {
        SendVerdict::Modify(Changes {
            body: Some(vec![b'x'; BODY_LEN]),
            visible_to: None,
        })
    }
}

export_plugin!(HugeReturn);
