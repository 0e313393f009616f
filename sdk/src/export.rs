//! The glue behind [`export_plugin!`](crate::export_plugin): the generated bindings, the
//! real host and the adapter from the generated `Guest` trait to [`Plugin`]. Not public
//! API; only `pub` so that the macro can reach it from the plugin's crate.

use std::marker::PhantomData;

use crate::{Host, Level, Plugin, Stored};

/// The bindings wit-bindgen generates for world `plugin` of `wit/chat-gateway.wit`.
#[allow(unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        // The export macro is expanded in the plugin's crate by `export_plugin!`.
        pub_export_macro: true,
        export_macro_name: "__export_world_plugin",
    });
}

use bindings::chat::gateway::host as imports;

/// The real host: the `chat:gateway/host` imports. (On native targets wit-bindgen's
/// import stubs panic; tests use [`TestHost`](crate::testing::TestHost).)
#[derive(Debug, Clone, Copy, Default)]
pub struct WasmHost;

impl Host for WasmHost {
    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        imports::kv_get(key)
    }

    fn kv_set(&self, key: &str, value: &[u8]) {
        imports::kv_set(key, value);
    }

    fn kv_delete(&self, key: &str) {
        imports::kv_delete(key);
    }

    fn log(&self, level: Level, message: &str) {
        imports::log(level.into(), message);
    }

    fn now_ms(&self) -> u64 {
        imports::now_ms()
    }

    fn config(&self) -> String {
        imports::config()
    }

    fn notify(&self, group: &str, user: &str, text: &str) -> Result<u64, String> {
        imports::notify(group, user, text)
    }
}

/// Implements the generated `Guest` trait for a [`Plugin`] `P`, forwarding each export to
/// `P`'s hook with a [`WasmHost`] and converting the types.
pub struct Adapter<P>(PhantomData<fn() -> P>);

impl<P: Plugin> bindings::Guest for Adapter<P> {
    fn describe() -> bindings::Info {
        P::info().into()
    }

    fn on_send(message: bindings::Outgoing) -> bindings::SendVerdict {
        P::on_send(&WasmHost, message.into()).into()
    }

    fn filter_read(user: String, group: String, messages: Vec<bindings::Stored>) -> Vec<u64> {
        let messages: Vec<Stored> = messages.into_iter().map(Into::into).collect();
        P::filter_read(&WasmHost, &user, &group, &messages)
    }

    fn on_command(
        user: String,
        group: String,
        name: String,
        args: Vec<String>,
    ) -> Result<String, String> {
        P::on_command(&WasmHost, &user, &group, &name, &args)
    }

    fn ack_policy(
        user: String,
        device: String,
        delivery: bindings::Delivery,
    ) -> Option<bindings::AckPolicy> {
        P::ack_policy(&WasmHost, &user, &device, delivery.into()).map(Into::into)
    }
}

/// Used by `export_plugin!` so that a type that is not a [`Plugin`] fails to compile on
/// every target, not only on wasm32 where the exports are emitted.
pub const fn assert_plugin<P: Plugin>() {}

/// Exports `$plugin` (a [`Plugin`]) as the implementation of world `chat:gateway/plugin`.
///
/// Invoke it once, at the top level of a `cdylib` crate:
///
/// ```
/// use chat_plugin_sdk::{Info, Plugin, export_plugin};
///
/// struct Nothing;
///
/// impl Plugin for Nothing {
///     fn info() -> Info {
///         Info { name: "nothing".into(), version: "0.1.0".into(), hooks: vec![], commands: vec![] }
///     }
/// }
///
/// export_plugin!(Nothing);
/// ```
///
/// The exports are emitted only when compiling for `wasm32` (e.g. `--target
/// wasm32-wasip2`, which yields a component); on other targets the macro just checks that
/// `$plugin` is a `Plugin`, so the crate still builds and its unit tests run natively, and
/// two plugin crates can be linked into one native binary.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty $(,)?) => {
        const _: () = $crate::__private::assert_plugin::<$plugin>();

        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            type __ChatPluginExport = $crate::__private::Adapter<$plugin>;
            $crate::__private::bindings::__export_world_plugin!(
                __ChatPluginExport with_types_in $crate::__private::bindings
            );
        };
    };
}
