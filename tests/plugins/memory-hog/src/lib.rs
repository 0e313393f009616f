//! Fault test: `on_send` allocates and touches memory until the host's memory cap stops
//! it.

use chat_plugin_sdk::{Hook, Host, Info, Outgoing, Plugin, SendVerdict, export_plugin};

struct MemoryHog;

impl Plugin for MemoryHog {
    fn info() -> Info {
        Info {
            name: "memory-hog".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::Send],
            commands: vec![],
        }
    }

    fn on_send(_host: &dyn Host, _message: Outgoing) -> SendVerdict {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Nonzero bytes: every page is written, so none stays untouched.
            hoard.push(vec![0xa5; 1 << 20]);
            std::hint::black_box(&mut hoard);
        }
    }
}

export_plugin!(MemoryHog);
