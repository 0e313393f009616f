//! The plugins shipped inside the gateway binary: built from `plugins/` for
//! `wasm32-wasip2` by `build.rs`, so a plain `cargo build` or `cargo install` has them.

macro_rules! bundle {
    ($($name:literal => $file:literal),* $(,)?) => {
        /// (name, component bytes) of every bundled plugin.
        pub const BUNDLED: &[(&str, &[u8])] = &[
            $(($name, include_bytes!(concat!(env!("OUT_DIR"), "/", $file)))),*
        ];
    };
}

bundle! {
    "delete-filter" => "delete_filter.wasm",
    "private-messages" => "private_messages.wasm",
    "ack-batching" => "ack_batching.wasm",
    "word-filter" => "word_filter.wasm",
}

/// The bundled plugin called `name`.
pub fn bundled(name: &str) -> Option<&'static [u8]> {
    BUNDLED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}
