//! Write plugins for chat-gateway in Rust.
//!
//! A plugin is a WebAssembly component of the world `chat:gateway/plugin`
//! (`wit/chat-gateway.wit`). With this crate it is a `cdylib` crate that
//!
//! 1. implements [`Plugin`] on a unit struct: [`Plugin::info`] and the hooks it lists;
//! 2. exports it with [`export_plugin!`];
//! 3. is built with `cargo build --release --target wasm32-wasip2`, which yields the
//!    component `target/wasm32-wasip2/release/NAME.wasm`.
//!
//! Hooks reach the gateway through a [`Host`] (key-value store, log, clock, configuration,
//! notices). Their logic can be unit-tested natively with plain `cargo test`, passing a
//! [`testing::TestHost`].
//!
//! ```
//! use chat_plugin_sdk::{Host, Hook, Info, Outgoing, Plugin, SendVerdict, export_plugin};
//!
//! struct NoShouting;
//!
//! impl Plugin for NoShouting {
//!     fn info() -> Info {
//!         Info {
//!             name: "no-shouting".into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             hooks: vec![Hook::Send],
//!             commands: vec![],
//!         }
//!     }
//!
//!     fn on_send(_host: &dyn Host, message: Outgoing) -> SendVerdict {
//!         let text = String::from_utf8_lossy(&message.body);
//!         if text.chars().any(char::is_lowercase) || !text.chars().any(char::is_uppercase) {
//!             SendVerdict::Accept
//!         } else {
//!             SendVerdict::Reject("please don't shout".into())
//!         }
//!     }
//! }
//!
//! export_plugin!(NoShouting);
//! ```

mod export;
mod host;
mod plugin;
pub mod testing;
mod types;

pub use host::Host;
pub use plugin::Plugin;
pub use types::{AckPolicy, Changes, Delivery, Hook, Info, Level, Outgoing, SendVerdict, Stored};

/// Implementation details of [`export_plugin!`]; not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{Adapter, WasmHost, assert_plugin, bindings};
}
