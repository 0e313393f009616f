//! Fault test: a component of another world (`test:other/other`, see `wit/other.wit`),
//! built with wit-bindgen directly; the gateway must refuse to load it.

#![allow(unsafe_code)] // wit-bindgen's generated ABI glue

wit_bindgen::generate!({
    world: "other",
    path: "wit",
});

struct Other;

impl Guest for Other {
    fn hello() -> String {
        "hello from another world".into()
    }
}

export!(Other);
