//! Fault test: `on_send` panics, which traps the component.

use chat_plugin_sdk::{Hook, Host, Info, Outgoing, Plugin, SendVerdict, export_plugin};

struct Trap;

impl Plugin for Trap {
    fn info() -> Info {
        Info {
            name: "trap".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::Send],
            commands: vec![],
        }
    }

    fn on_send(_host: &dyn Host, _message: Outgoing) -> SendVerdict {
        panic!("plugin bug");
    }
}

export_plugin!(Trap);
