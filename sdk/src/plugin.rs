//! [`Plugin`]: the hooks a plugin implements.

use crate::{AckPolicy, Delivery, Host, Info, Outgoing, SendVerdict, Stored};

/// The hooks of a plugin. Implement it on a unit struct and export it with
/// [`export_plugin!`](crate::export_plugin).
///
/// Only [`info`](Self::info) is required. The gateway calls only the hooks listed in
/// [`Info::hooks`]; the others keep their default bodies, which do nothing. Do not count on
/// memory surviving from one call to the next: anything that must last goes to the
/// key-value store ([`Host::kv_set`]).
///
/// A panic (or any other trap) fails only the current call; the gateway decides what that
/// means for the message (see the operator docs).
pub trait Plugin {
    /// The plugin's name, version, hooks and commands. Called once, at load.
    fn info() -> Info;

    /// Called once per message, before it is stored, in the operator's plugin order.
    fn on_send(host: &dyn Host, message: Outgoing) -> SendVerdict {
        let _ = (host, message);
        SendVerdict::Accept
    }

    /// Called once per page of messages that `user` reads from `group` (history, catch-up
    /// after reconnecting): returns the seqs to hide from this user. A hidden message still
    /// reaches the user as a bodiless placeholder, so gaps stay detectable.
    fn filter_read(host: &dyn Host, user: &str, group: &str, messages: &[Stored]) -> Vec<u64> {
        let _ = (host, user, group, messages);
        Vec::new()
    }

    /// Runs a client command this plugin owns (`chat COMMAND GROUP ARGS...`): `Ok` or
    /// `Err`, the text is the answer the client sees.
    fn on_command(
        host: &dyn Host,
        user: &str,
        group: &str,
        name: &str,
        args: &[String],
    ) -> Result<String, String> {
        let _ = (host, user, group, args);
        Err(format!("unknown command {name}"))
    }

    /// The ACK policy for a connection of `user` on `device`; `None` keeps the gateway's
    /// default.
    fn ack_policy(
        host: &dyn Host,
        user: &str,
        device: &str,
        delivery: Delivery,
    ) -> Option<AckPolicy> {
        let _ = (host, user, device, delivery);
        None
    }
}
