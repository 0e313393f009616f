//! Fault test: `on_send` never returns (the host's CPU limit must stop it).

use chat_plugin_sdk::{Hook, Host, Info, Outgoing, Plugin, SendVerdict, export_plugin};

struct Spin;

impl Plugin for Spin {
    fn info() -> Info {
        Info {
            name: "spin".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::Send],
            commands: vec![],
        }
    }

    fn on_send(_host: &dyn Host, _message: Outgoing) -> SendVerdict {
        let mut counter = 0u64;
        loop {
            // `black_box` keeps the optimizer from proving the loop useless and removing it.
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
}

export_plugin!(Spin);
