//! Fault test: `on_send` calls the host (`kv_get`) in an endless loop; the host's limits
//! must stop it even though the guest spends its time in host calls.

use chat_plugin_sdk::{Hook, Host, Info, Outgoing, Plugin, SendVerdict, export_plugin};

struct HostCallStorm;

impl Plugin for HostCallStorm {
    fn info() -> Info {
        Info {
            name: "host-call-storm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::Send],
            commands: vec![],
        }
    }

    fn on_send(host: &dyn Host, _message: Outgoing) -> SendVerdict {
        loop {
            std::hint::black_box(host.kv_get("storm"));
        }
    }
}

export_plugin!(HostCallStorm);
