//! The wasmtime side: one engine per gateway, each plugin compiled once and
//! pre-instantiated, instances reused from a small pool, every call under a CPU deadline,
//! a memory cap and a host-call budget. A fault costs that call and that instance only.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store, StoreLimitsBuilder};

use super::bindings::chat::gateway::types::{self as wit, Hook};
use super::bindings::{Plugin, PluginPre};
use super::host::{HOST_CALLS_PER_HOOK, HostState};
use super::{Failure, PluginError, PluginSpec};
use crate::session::Publisher;
use crate::store::Store as ChatStore;

/// How often the epoch advances: the granularity of CPU deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Idle instances kept per plugin for reuse.
const POOL_SIZE: usize = 8;
/// Wasm stack per instance.
const MAX_STACK: usize = 512 * 1024;

/// The engine and linker shared by every plugin of a gateway.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    ticker: Arc<Ticker>,
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while a plugin runs, and sleeps while
/// none does: ticking for the gateway's whole life woke an idle gateway a thousand times a
/// second (docs/BENCHMARKS.md, fifteenth set).
#[derive(Default)]
struct Ticker {
    /// Plugin calls running now.
    running: Mutex<usize>,
    started: Condvar,
}

impl Ticker {
    /// Calls `tick` every [`EPOCH_TICK`] while a call runs, until it returns false (the
    /// engine is gone); while none runs, once a second (to notice that).
    fn run(&self, mut tick: impl FnMut() -> bool) {
        loop {
            let mut running = self.running.lock().expect("ticker lock");
            while *running == 0 {
                let (guard, waited) = self
                    .started
                    .wait_timeout(running, Duration::from_secs(1))
                    .expect("ticker lock");
                running = guard;
                if waited.timed_out() && *running == 0 && !tick() {
                    return;
                }
            }
            drop(running);
            if !tick() {
                return;
            }
            std::thread::sleep(EPOCH_TICK);
        }
    }
}

/// Keeps the epoch advancing for as long as it lives: held across a call into a plugin.
struct Ticking<'a>(&'a Ticker);

impl<'a> Ticking<'a> {
    fn new(ticker: &'a Ticker) -> Self {
        let mut running = ticker.running.lock().expect("ticker lock");
        *running += 1;
        if *running == 1 {
            ticker.started.notify_one();
        }
        Self(ticker)
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().expect("ticker lock") -= 1;
    }
}

impl Runtime {
    pub fn new() -> Result<Arc<Self>, PluginError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(MAX_STACK);
        // Plugins are small; reserve little address space per memory.
        config.memory_reservation(64 << 20);
        let engine = Engine::new(&config).map_err(PluginError::engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(PluginError::engine)?;
        Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |state| state)
            .map_err(PluginError::engine)?;
        let ticker = Arc::new(Ticker::default());
        let (weak, thread_ticker) = (engine.weak(), ticker.clone());
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            // Stops when the last engine handle (the runtime's) is gone.
            .spawn(move || {
                thread_ticker.run(|| {
                    weak.upgrade()
                        .map(|engine| engine.increment_epoch())
                        .is_some()
                })
            })
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        Ok(Arc::new(Self {
            engine,
            linker,
            ticker,
        }))
    }

    /// Compiles a component and checks that it is a plugin of this world.
    pub fn prepare(&self, bytes: &[u8]) -> Result<PluginPre<HostState>, PluginError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(PluginError::Invalid("not a WebAssembly file".into()));
        }
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(PluginError::Invalid(
                "a core WebAssembly module, not a component: build it with --target wasm32-wasip2"
                    .into(),
            ));
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| PluginError::Invalid(format!("not a WebAssembly component: {e:#}")))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            PluginError::Invalid(format!(
                "imports something this gateway does not offer: {e:#}"
            ))
        })?;
        PluginPre::new(pre)
            .map_err(|e| PluginError::Invalid(format!("not a chat:gateway@0.1.0 plugin: {e:#}")))
    }
}

/// Counters an operator watches.
#[derive(Debug, Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub faults: AtomicU64,
    faults_in_a_row: AtomicU32,
    pub disabled: AtomicBool,
}

/// Per plugin and hook: calls with their latency, and faults. Shared by every plugin of a
/// gateway; a reloaded plugin goes on counting under the same labels.
#[derive(Clone)]
pub struct PluginMetrics {
    calls: crate::metrics::LatencyFamily<PluginHook>,
    faults: Family<PluginHook, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginHook {
    plugin: String,
    hook: &'static str,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        Self {
            calls: crate::metrics::latency_family(),
            faults: Family::default(),
        }
    }
}

impl PluginMetrics {
    pub fn register(&self, registry: &mut Registry) {
        crate::metrics::register_seconds(
            registry,
            "plugin_call",
            "Plugin hook calls and their latency, by plugin and hook (_count: calls)",
            self.calls.clone(),
        );
        registry.register(
            "plugin_faults",
            "Plugin faults (trap, timeout, memory cap, bad answer), by plugin and hook",
            self.faults.clone(),
        );
    }
}

/// A reusable instance: its store and bindings.
pub struct Instance {
    pub store: Store<HostState>,
    pub bindings: Plugin,
}

/// A compiled plugin, ready to be called.
pub struct Loaded {
    pub spec: PluginSpec,
    /// The plugin's own name (from `describe`), its key-value namespace.
    pub name: Arc<str>,
    pub version: String,
    pub hooks: Vec<Hook>,
    /// Client commands it owns.
    pub commands: Vec<String>,
    pre: PluginPre<HostState>,
    runtime: Arc<Runtime>,
    store: Arc<dyn ChatStore>,
    publisher: Arc<Publisher>,
    config_json: Arc<str>,
    pool: Mutex<Vec<Instance>>,
    pub stats: Stats,
    metrics: PluginMetrics,
}

/// Why one call into a plugin failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Fault {
    #[error("plugin {0} is disabled after repeated faults; reload it to retry")]
    Disabled(String),
    #[error("plugin {plugin} failed: {reason}")]
    Failed { plugin: String, reason: String },
}

impl Loaded {
    pub async fn new(
        runtime: Arc<Runtime>,
        spec: PluginSpec,
        bytes: &[u8],
        store: Arc<dyn ChatStore>,
        publisher: Arc<Publisher>,
        metrics: PluginMetrics,
    ) -> Result<Self, PluginError> {
        // Compiling takes a while: off the async workers, so live traffic goes on meanwhile.
        let pre = {
            let (runtime, bytes) = (runtime.clone(), bytes.to_vec());
            tokio::task::spawn_blocking(move || runtime.prepare(&bytes))
                .await
                .map_err(PluginError::engine)??
        };
        let config_json: Arc<str> = serde_json::to_string(&spec.config)
            .map_err(|e| PluginError::Invalid(format!("config: {e}")))?
            .into();
        let mut loaded = Self {
            name: spec.source.clone().into(),
            version: String::new(),
            hooks: Vec::new(),
            commands: Vec::new(),
            spec,
            pre,
            runtime,
            store,
            publisher,
            config_json,
            pool: Mutex::new(Vec::new()),
            stats: Stats::default(),
            metrics,
        };
        let info = loaded
            .describe()
            .await
            .map_err(|e| PluginError::Invalid(e.to_string()))?;
        if !chat_protocol::valid_id(&info.name) {
            return Err(PluginError::Invalid(format!(
                "plugin name {:?} is not a valid id",
                info.name
            )));
        }
        // Instances made before the name was known carry the wrong namespace; and loading
        // is not a call an operator counts.
        loaded.pool.lock().expect("pool lock").clear();
        loaded.stats = Stats::default();
        loaded.name = info.name.into();
        loaded.version = info.version;
        loaded.hooks = info.hooks;
        loaded.commands = info.commands;
        Ok(loaded)
    }

    pub fn has(&self, hook: Hook) -> bool {
        self.hooks.contains(&hook)
    }

    async fn instantiate(&self) -> wasmtime::Result<Instance> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.spec.memory_mb as usize * 1024 * 1024)
            .instances(16)
            .tables(16)
            .table_elements(100_000)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState::new(
            self.name.clone(),
            self.config_json.clone(),
            self.store.clone(),
            self.publisher.clone(),
            limits,
        );
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        let bindings = self.pre.instantiate_async(&mut store).await?;
        Ok(Instance { store, bindings })
    }

    fn deadline_ticks(&self) -> u64 {
        (self.spec.cpu_ms.max(1) as u128 * 1000 / EPOCH_TICK.as_micros()).max(1) as u64
    }

    pub async fn describe(&self) -> Result<wit::Info, Fault> {
        match self.call(Call::Describe).await? {
            Answer::Info(info) => Ok(info),
            _ => unreachable!("describe answers with info"),
        }
    }

    pub async fn on_send(&self, message: &wit::Outgoing) -> Result<wit::SendVerdict, Fault> {
        match self.call(Call::OnSend(message)).await? {
            Answer::Verdict(verdict) => Ok(verdict),
            _ => unreachable!("on-send answers with a verdict"),
        }
    }

    pub async fn filter_read(
        &self,
        user: &str,
        group: &str,
        page: &[wit::Stored],
    ) -> Result<Vec<u64>, Fault> {
        match self.call(Call::FilterRead(user, group, page)).await? {
            Answer::Hidden(seqs) => Ok(seqs),
            _ => unreachable!("filter-read answers with seqs"),
        }
    }

    pub async fn on_command(
        &self,
        user: &str,
        group: &str,
        name: &str,
        args: &[String],
    ) -> Result<Result<String, String>, Fault> {
        match self.call(Call::Command(user, group, name, args)).await? {
            Answer::Command(result) => Ok(result),
            _ => unreachable!("on-command answers with a result"),
        }
    }

    pub async fn ack_policy(
        &self,
        user: &str,
        device: &str,
        delivery: wit::Delivery,
    ) -> Result<Option<wit::AckPolicy>, Fault> {
        match self.call(Call::AckPolicy(user, device, delivery)).await? {
            Answer::Ack(policy) => Ok(policy),
            _ => unreachable!("ack-policy answers with a policy"),
        }
    }

    /// Runs one hook call on a pooled (or fresh) instance under the plugin's limits.
    async fn call(&self, call: Call<'_>) -> Result<Answer, Fault> {
        if self.stats.disabled.load(Ordering::Relaxed) {
            return Err(Fault::Disabled(self.name.to_string()));
        }
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let hook = call.hook();
        let started = Instant::now();
        let result = self.call_instance(call).await;
        if hook != "describe" {
            let labels = PluginHook {
                plugin: self.name.to_string(),
                hook,
            };
            self.metrics
                .calls
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            if result.is_err() {
                self.metrics.faults.get_or_create(&labels).inc();
            }
        }
        result
    }

    async fn call_instance(&self, call: Call<'_>) -> Result<Answer, Fault> {
        // Instantiating runs guest code too.
        let _ticking = Ticking::new(&self.runtime.ticker);
        let pooled = self.pool.lock().expect("pool lock").pop();
        let mut instance = match pooled {
            Some(instance) => instance,
            None => match self.instantiate().await {
                Ok(instance) => instance,
                Err(e) => return Err(self.fault(format!("instantiating: {e:#}"))),
            },
        };
        instance.store.set_epoch_deadline(self.deadline_ticks());
        instance.store.data_mut().calls_left = HOST_CALLS_PER_HOOK;
        // Host calls (store access) do not advance the epoch check; this bounds them too.
        let wall = Duration::from_millis(self.spec.cpu_ms.max(1) * 10 + 1000);
        match tokio::time::timeout(wall, invoke(&mut instance, call)).await {
            Ok(Ok(value)) => {
                self.stats.faults_in_a_row.store(0, Ordering::Relaxed);
                let mut pool = self.pool.lock().expect("pool lock");
                if self.spec.reuse_instances && pool.len() < POOL_SIZE {
                    pool.push(instance);
                }
                Ok(value)
            }
            // A trapped instance is dropped: its memory may be inconsistent.
            Ok(Err(trap)) => Err(self.fault(describe_trap(&trap, &self.spec))),
            Err(_) => Err(self.fault(format!("took longer than {} ms", wall.as_millis()))),
        }
    }

    /// A fault in what a call answered (the call itself went fine).
    pub fn bad_answer(&self, hook: &'static str, reason: String) -> Fault {
        let labels = PluginHook {
            plugin: self.name.to_string(),
            hook,
        };
        self.metrics.faults.get_or_create(&labels).inc();
        self.fault(reason)
    }

    /// Counts a fault, logs it, and disables the plugin after too many in a row.
    pub fn fault(&self, reason: String) -> Fault {
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        let in_a_row = self.stats.faults_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        let plugin = self.name.to_string();
        tracing::warn!(%plugin, %reason, in_a_row, "plugin fault");
        if in_a_row >= self.spec.max_faults && !self.stats.disabled.swap(true, Ordering::Relaxed) {
            tracing::error!(%plugin, in_a_row, "plugin disabled until reloaded");
        }
        Fault::Failed { plugin, reason }
    }

    pub fn failure(&self) -> Failure {
        self.spec.failure
    }
}

/// A hook call and its arguments.
enum Call<'a> {
    Describe,
    OnSend(&'a wit::Outgoing),
    FilterRead(&'a str, &'a str, &'a [wit::Stored]),
    Command(&'a str, &'a str, &'a str, &'a [String]),
    AckPolicy(&'a str, &'a str, wit::Delivery),
}

impl Call<'_> {
    fn hook(&self) -> &'static str {
        match self {
            Call::Describe => "describe",
            Call::OnSend(_) => "send",
            Call::FilterRead(..) => "read",
            Call::Command(..) => "command",
            Call::AckPolicy(..) => "ack-policy",
        }
    }
}

/// What a hook call returned.
enum Answer {
    Info(wit::Info),
    Verdict(wit::SendVerdict),
    Hidden(Vec<u64>),
    Command(Result<String, String>),
    Ack(Option<wit::AckPolicy>),
}

async fn invoke(i: &mut Instance, call: Call<'_>) -> wasmtime::Result<Answer> {
    let (b, store) = (&i.bindings, &mut i.store);
    Ok(match call {
        Call::Describe => Answer::Info(b.call_describe(store).await?),
        Call::OnSend(message) => Answer::Verdict(b.call_on_send(store, message).await?),
        Call::FilterRead(user, group, page) => {
            Answer::Hidden(b.call_filter_read(store, user, group, page).await?)
        }
        Call::Command(user, group, name, args) => {
            Answer::Command(b.call_on_command(store, user, group, name, args).await?)
        }
        Call::AckPolicy(user, device, delivery) => {
            Answer::Ack(b.call_ack_policy(store, user, device, delivery).await?)
        }
    })
}

fn describe_trap(trap: &wasmtime::Error, spec: &PluginSpec) -> String {
    match trap.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => format!("exceeded its CPU budget of {} ms", spec.cpu_ms),
        Some(wasmtime::Trap::StackOverflow) => "overflowed its stack".into(),
        Some(other) => format!("trapped: {other}"),
        None => {
            let text = format!("{trap:#}");
            if text.contains("memory") && text.contains("limit") {
                format!("exceeded its memory cap of {} MiB", spec.memory_mb)
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::{Ticker, Ticking};

    /// Waits (up to 5 s: a loaded machine may hold a thread back) until `done` holds.
    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_epoch_ticks_only_while_a_plugin_runs() {
        let ticker = Arc::new(Ticker::default());
        let ticks = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (ticker, ticks) = (ticker.clone(), ticks.clone());
            move || ticker.run(|| ticks.fetch_add(1, Ordering::SeqCst) < 1_000_000)
        });
        let count = || ticks.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(count(), 0, "ticked with no call running");

        let call = Ticking::new(&ticker);
        eventually("five ticks during a call", || count() >= 5);
        drop(call);
        // At most the tick under way when the call ended, then none.
        let mut settled = 0;
        eventually("the ticks to stop after the call", || {
            let before = count();
            std::thread::sleep(Duration::from_millis(20));
            settled = count();
            settled == before
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(count(), settled, "went on ticking after the call ended");

        // Two calls at once: ticking until both ended.
        let (a, b) = (Ticking::new(&ticker), Ticking::new(&ticker));
        drop(a);
        eventually("ticks while one call still runs", || count() >= settled + 5);
        drop(b);

        // The engine gone: the thread ends at its next tick.
        ticks.store(1_000_000, Ordering::SeqCst);
        let _last = Ticking::new(&ticker);
        thread.join().unwrap();
    }
}
