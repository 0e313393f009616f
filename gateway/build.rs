//! Builds the bundled plugins (`plugins/*`) as `wasm32-wasip2` components and puts them in
//! `OUT_DIR`, where `src/plugins/bundled.rs` embeds them in the gateway binary.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const BUNDLED: &[&str] = &[
    "delete-filter",
    "private-messages",
    "ack-batching",
    "word-filter",
];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("gateway/ sits in the workspace");
    for input in ["sdk", "plugins", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    ensure_target();

    let target_dir = plugin_target_dir(&out_dir);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    for plugin in BUNDLED {
        command.args(["-p", plugin]);
    }
    // The outer build's flags, wrappers (clippy) and target are not the plugins'.
    // Small components: no debug info in what ships inside the binary.
    command
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .expect("running cargo to build the bundled plugins");
    assert!(
        status.success(),
        "building the bundled plugins failed (see the errors above)"
    );

    for plugin in BUNDLED {
        let file = format!("{}.wasm", plugin.replace('-', "_"));
        let built = target_dir.join(TARGET).join("release").join(&file);
        std::fs::copy(&built, out_dir.join(&file))
            .unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
    }
}

/// Installs the wasm target when it is missing (a `rust-toolchain.toml` does not, here).
fn ensure_target() {
    let sysroot = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .exists()
    {
        return;
    }
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "the {TARGET} target is missing and `rustup target add {TARGET}` failed: install it, then build again"
    );
}

/// One plugin build directory for every profile of the gateway (debug, release, clippy),
/// beside cargo's own: `<target>/bundled-plugins`.
fn plugin_target_dir(out_dir: &Path) -> PathBuf {
    // OUT_DIR is <target>/<profile>/build/chat-gateway-<hash>/out.
    match out_dir.ancestors().nth(4) {
        Some(target) if target.join("CACHEDIR.TAG").exists() => target.join("bundled-plugins"),
        _ => out_dir.join("bundled-plugins"),
    }
}
