//! The imports a plugin may call — its whole view of the world. Each is checked and counted:
//! a call storm past the per-call budget traps the plugin, never the gateway.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, bail};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::chat::gateway::{host, types};
use crate::session::Publisher;
use crate::store::Store;

/// Most host calls one hook invocation may make.
pub const HOST_CALLS_PER_HOOK: u32 = 1_000;
/// Largest value a plugin may store under one key.
pub const MAX_KV_VALUE: usize = 1024 * 1024;
/// Longest key a plugin may use.
pub const MAX_KV_KEY: usize = 512;

/// Everything a plugin instance's store holds.
pub struct HostState {
    /// The plugin's name: its key-value namespace and its tag in logs.
    pub plugin: Arc<str>,
    /// The operator's config for this plugin, as JSON.
    pub config: Arc<str>,
    pub store: Arc<dyn Store>,
    pub publisher: Arc<Publisher>,
    pub limits: StoreLimits,
    /// Host calls left in the current hook invocation.
    pub calls_left: u32,
    /// A WASI context with nothing in it: std guests import `wasi:*`, and get no files,
    /// sockets, environment, arguments or stdio through it.
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    pub fn new(
        plugin: Arc<str>,
        config: Arc<str>,
        store: Arc<dyn Store>,
        publisher: Arc<Publisher>,
        limits: StoreLimits,
    ) -> Self {
        Self {
            plugin,
            config,
            store,
            publisher,
            limits,
            calls_left: HOST_CALLS_PER_HOOK,
            wasi: WasiCtx::builder()
                .wall_clock(StoppedClock)
                .monotonic_clock(StoppedClock)
                .build(),
            table: ResourceTable::new(),
        }
    }

    fn spend_call(&mut self) -> wasmtime::Result<()> {
        if self.calls_left == 0 {
            bail!("more than {HOST_CALLS_PER_HOOK} host calls in one hook call");
        }
        self.calls_left -= 1;
        Ok(())
    }

    fn key(&self, key: &str) -> wasmtime::Result<()> {
        if key.is_empty() || key.len() > MAX_KV_KEY {
            bail!("key-value keys are 1 to {MAX_KV_KEY} bytes");
        }
        Ok(())
    }
}

/// The clock WASI guests see: always zero. Plugins read time through `now-ms` only.
struct StoppedClock;

impl HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    async fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.spend_call()?;
        self.key(&key)?;
        Ok(self
            .store
            .plugin_get(&self.plugin, &key)
            .await?
            .map(|v| v.to_vec()))
    }

    async fn kv_set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        self.spend_call()?;
        self.key(&key)?;
        if value.len() > MAX_KV_VALUE {
            bail!("key-value values are at most {MAX_KV_VALUE} bytes");
        }
        Ok(self.store.plugin_set(&self.plugin, &key, &value).await?)
    }

    async fn kv_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.spend_call()?;
        self.key(&key)?;
        Ok(self.store.plugin_delete(&self.plugin, &key).await?)
    }

    async fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        self.spend_call()?;
        let plugin = &*self.plugin;
        let message: String = message.chars().take(2048).collect();
        match level {
            types::Level::Trace => tracing::trace!(%plugin, "{message}"),
            types::Level::Debug => tracing::debug!(%plugin, "{message}"),
            types::Level::Info => tracing::info!(%plugin, "{message}"),
            types::Level::Warn => tracing::warn!(%plugin, "{message}"),
            types::Level::Error => tracing::error!(%plugin, "{message}"),
        }
        Ok(())
    }

    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        self.spend_call()?;
        Ok(crate::session::now_ms())
    }

    async fn config(&mut self) -> wasmtime::Result<String> {
        self.spend_call()?;
        Ok(self.config.to_string())
    }

    async fn notify(
        &mut self,
        group: String,
        user: String,
        text: String,
    ) -> wasmtime::Result<Result<u64, String>> {
        self.spend_call()?;
        Ok(self
            .publisher
            .notice(&self.plugin, &group, &user, text.into_bytes())
            .await
            .map_err(|e| e.to_string()))
    }
}
