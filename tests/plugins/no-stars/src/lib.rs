//! Order test: refuses any message whose body contains `*`.

use chat_plugin_sdk::{Hook, Host, Info, Outgoing, Plugin, SendVerdict, export_plugin};

struct NoStars;

impl Plugin for NoStars {
    fn info() -> Info {
        Info {
            name: "no-stars".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::Send],
            commands: vec![],
        }
    }

    fn on_send(_host: &dyn Host, message: Outgoing) -> SendVerdict {
        if message.body.contains(&b'*') {
            SendVerdict::Reject("no stars, please".into())
        } else {
            SendVerdict::Accept
        }
    }
}

export_plugin!(NoStars);
