//! Policies as sandboxed WebAssembly plugins (`wit/chat-gateway.wit`, world `plugin`).
//!
//! [`Plugins`] is the ordered chain the gateway calls: once per message (send), once per
//! page (read), per command, per connection (ACK policy) — never per recipient. Each
//! plugin runs under its own CPU, memory and host-call limits (`runtime`); a fault is
//! decided by the plugin's [`Failure`] policy and never crashes the gateway.

mod bundled;
mod host;
mod runtime;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use chat_protocol::{AckPolicy, MAX_BODY_LEN};
use serde::{Deserialize, Serialize};

pub use bundled::{BUNDLED, bundled};
pub use runtime::{Fault, Loaded, PluginMetrics, Runtime};

use crate::session::Publisher;
use crate::store::{Store, StoredMessage};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

use bindings::chat::gateway::types as wit;

/// What happens to a message or read when a plugin faults (trap, timeout, memory cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    /// Go on as if this plugin were not there.
    #[default]
    FailOpen,
    /// Refuse the request with `plugin_failed`.
    FailClosed,
}

/// One `[[plugins]]` entry of the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// A `.wasm` component file, or `bundled:NAME` for a plugin shipped in the gateway.
    #[serde(rename = "path")]
    pub source: String,
    /// Handed to the plugin as JSON by the `config` import.
    #[serde(default = "empty_table")]
    pub config: toml::Table,
    #[serde(default)]
    pub failure: Failure,
    /// CPU time one hook call may take.
    #[serde(default = "default_cpu_ms")]
    pub cpu_ms: u64,
    /// Memory cap of one instance.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Faults in a row after which the plugin is disabled until reloaded.
    #[serde(default = "default_max_faults")]
    pub max_faults: u32,
    /// Reuse instances between calls (fast). `false` gives every call a fresh instance,
    /// so nothing a plugin keeps in memory survives from one call to the next (slower).
    #[serde(default = "default_reuse")]
    pub reuse_instances: bool,
}

fn empty_table() -> toml::Table {
    toml::Table::new()
}
fn default_cpu_ms() -> u64 {
    50
}
fn default_memory_mb() -> u32 {
    32
}
fn default_max_faults() -> u32 {
    10
}
fn default_reuse() -> bool {
    true
}

impl PluginSpec {
    /// A spec with default limits.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            config: empty_table(),
            failure: Failure::default(),
            cpu_ms: default_cpu_ms(),
            memory_mb: default_memory_mb(),
            max_faults: default_max_faults(),
            reuse_instances: default_reuse(),
        }
    }

    /// The plugins `serve` loads when the config names none.
    pub fn defaults() -> Vec<PluginSpec> {
        ["delete-filter", "private-messages", "ack-batching"]
            .into_iter()
            .map(|name| {
                let mut spec = PluginSpec::new(format!("bundled:{name}"));
                // Policies that guard who sees what fail closed.
                if name == "private-messages" {
                    spec.failure = Failure::FailClosed;
                }
                spec
            })
            .collect()
    }

    /// The component's bytes.
    pub fn read(&self) -> Result<Vec<u8>, PluginError> {
        match self.source.strip_prefix("bundled:") {
            Some(name) => bundled(name).map(<[u8]>::to_vec).ok_or_else(|| {
                PluginError::Invalid(format!(
                    "no bundled plugin {name:?}; bundled: {}",
                    bundled_names()
                ))
            }),
            None => std::fs::read(&self.source)
                .map_err(|e| PluginError::Invalid(format!("{}: {e}", self.source))),
        }
    }
}

fn bundled_names() -> String {
    BUNDLED
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    Invalid(String),
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("no plugin {0:?} is loaded")]
    NotLoaded(String),
}

impl PluginError {
    fn engine(e: impl std::fmt::Display) -> Self {
        PluginError::Engine(e.to_string())
    }
}

/// A loaded plugin, as `plugin check` and operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct Description {
    pub name: String,
    pub version: String,
    pub hooks: Vec<&'static str>,
    pub commands: Vec<String>,
}

/// What the send hooks made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    pub body: bytes::Bytes,
    /// `None`: the whole group. Only ever narrowed.
    pub visible_to: Option<Vec<String>>,
}

/// Why the chain refused a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// A plugin said no; its text is for the user.
    #[error("{0}")]
    Rejected(String),
    /// A fail-closed plugin faulted.
    #[error(transparent)]
    Failed(Fault),
    #[error("no plugin provides the command {0:?}")]
    UnknownCommand(String),
}

/// A loaded plugin as the admin API shows it: what it is, how it is configured, how it fares.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    #[serde(flatten)]
    pub description: Description,
    /// Where it was loaded from (`bundled:NAME` or a file).
    pub source: String,
    pub failure: Failure,
    pub calls: u64,
    pub faults: u64,
    /// Disabled after `max_faults` faults in a row, until reloaded.
    pub disabled: bool,
}

/// The ordered plugin chain; replaced whole on every change, so a call sees one
/// consistent chain and calls in flight finish on the one they started with.
pub struct Plugins {
    runtime: Arc<Runtime>,
    store: Arc<dyn Store>,
    publisher: Arc<Publisher>,
    chain: RwLock<Arc<Vec<Arc<Loaded>>>>,
    /// Serializes changes: each builds on the chain the previous one left.
    changing: tokio::sync::Mutex<()>,
    default_ack: (AckPolicy, AckPolicy),
    metrics: PluginMetrics,
}

impl Plugins {
    /// A chain with no plugins yet.
    pub fn new(
        store: Arc<dyn Store>,
        publisher: Arc<Publisher>,
        default_ack: (AckPolicy, AckPolicy),
    ) -> Result<Arc<Self>, PluginError> {
        Ok(Arc::new(Self {
            runtime: Runtime::new()?,
            store,
            publisher,
            chain: RwLock::new(Arc::new(Vec::new())),
            changing: tokio::sync::Mutex::new(()),
            default_ack,
            metrics: PluginMetrics::default(),
        }))
    }

    async fn compile(&self, spec: &PluginSpec) -> Result<Arc<Loaded>, PluginError> {
        let bytes = spec.read()?;
        let plugin = Loaded::new(
            self.runtime.clone(),
            spec.clone(),
            &bytes,
            self.store.clone(),
            self.publisher.clone(),
            self.metrics.clone(),
        )
        .await
        .map_err(|e| PluginError::Invalid(format!("{}: {e}", spec.source)))?;
        Ok(Arc::new(plugin))
    }

    /// Loads `specs` in order and swaps them in. If any fails, nothing changes.
    pub async fn load(&self, specs: &[PluginSpec]) -> Result<Vec<Description>, PluginError> {
        let _changing = self.changing.lock().await;
        let mut entries = Vec::with_capacity(specs.len());
        for spec in specs {
            entries.push(self.compile(spec).await?);
        }
        self.swap(entries)
    }

    /// Loads one more plugin at `position` (default: last). The rest keep running as they are.
    pub async fn insert(
        &self,
        spec: &PluginSpec,
        position: Option<usize>,
    ) -> Result<Description, PluginError> {
        let _changing = self.changing.lock().await;
        let plugin = self.compile(spec).await?;
        let description = describe(&plugin);
        let mut entries = self.chain().as_ref().clone();
        let at = position.unwrap_or(entries.len());
        if at > entries.len() {
            return Err(PluginError::Invalid(format!(
                "position {at} is past the end of the chain ({} plugins)",
                entries.len()
            )));
        }
        entries.insert(at, plugin);
        self.swap(entries)?;
        Ok(description)
    }

    /// Loads `name` again from its source (a rebuilt file, say) with fresh instances and
    /// counters, keeping its place. If it fails to load, the running one stays.
    pub async fn reload(&self, name: &str) -> Result<Description, PluginError> {
        let _changing = self.changing.lock().await;
        let mut entries = self.chain().as_ref().clone();
        let at = position_of(&entries, name)?;
        let plugin = self.compile(&entries[at].spec).await?;
        let description = describe(&plugin);
        entries[at] = plugin;
        self.swap(entries)?;
        Ok(description)
    }

    /// Unloads `name`; calls in flight finish on the chain they started with.
    pub async fn remove(&self, name: &str) -> Result<(), PluginError> {
        let _changing = self.changing.lock().await;
        let mut entries = self.chain().as_ref().clone();
        entries.remove(position_of(&entries, name)?);
        self.swap(entries).map(drop)
    }

    /// Puts the chain in the order `names` gives: every loaded plugin, each once.
    pub async fn reorder(&self, names: &[String]) -> Result<(), PluginError> {
        let _changing = self.changing.lock().await;
        let entries = self.chain();
        let mut current: Vec<&str> = entries.iter().map(|e| &*e.name).collect();
        let mut wanted: Vec<&str> = names.iter().map(String::as_str).collect();
        current.sort_unstable();
        wanted.sort_unstable();
        if current != wanted {
            return Err(PluginError::Invalid(format!(
                "the new order must name every loaded plugin once: {}",
                current.join(", ")
            )));
        }
        let reordered = names
            .iter()
            .map(|name| entries[position_of(&entries, name).expect("checked above")].clone())
            .collect();
        self.swap(reordered).map(drop)
    }

    fn swap(&self, entries: Vec<Arc<Loaded>>) -> Result<Vec<Description>, PluginError> {
        let mut names = HashSet::new();
        for plugin in &entries {
            if !names.insert(plugin.name.clone()) {
                return Err(PluginError::Invalid(format!(
                    "plugin {} is loaded already",
                    plugin.name
                )));
            }
        }
        let descriptions = entries.iter().map(|e| describe(e)).collect();
        *self.chain.write().expect("chain lock") = Arc::new(entries);
        Ok(descriptions)
    }

    fn chain(&self) -> Arc<Vec<Arc<Loaded>>> {
        self.chain.read().expect("chain lock").clone()
    }

    /// The specs of the running chain, in order (what a restart should load to match).
    pub fn specs(&self) -> Vec<PluginSpec> {
        self.chain().iter().map(|e| e.spec.clone()).collect()
    }

    /// The loaded plugins, in order, with their call and fault counts.
    pub fn describe(&self) -> Vec<PluginStatus> {
        self.chain()
            .iter()
            .map(|e| {
                let stats = &e.stats;
                PluginStatus {
                    description: describe(e),
                    source: e.spec.source.clone(),
                    failure: e.spec.failure,
                    calls: stats.calls.load(Ordering::Relaxed),
                    faults: stats.faults.load(Ordering::Relaxed),
                    disabled: stats.disabled.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    pub(crate) fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    /// Runs the send hooks in order. `to` (the sender's private recipients) already
    /// restricts visibility; plugins can only narrow it further.
    pub async fn on_send(
        &self,
        group: &str,
        sender: &str,
        body: bytes::Bytes,
        to: Vec<String>,
    ) -> Result<SendOutcome, Refusal> {
        let mut outcome = SendOutcome {
            body,
            visible_to: (!to.is_empty()).then(|| to.clone()),
        };
        let chain = self.chain();
        // Plain loops with `continue`: iterator closures held across `.await` upset `Send`.
        for entry in chain.iter() {
            if !entry.has(wit::Hook::Send) {
                continue;
            }
            let message = wit::Outgoing {
                group: group.to_owned(),
                sender: sender.to_owned(),
                body: outcome.body.to_vec(),
                to: to.clone(),
            };
            let verdict = entry.on_send(&message).await;
            let changes = match verdict {
                Ok(wit::SendVerdict::Accept) => continue,
                Ok(wit::SendVerdict::Reject(text)) => return Err(Refusal::Rejected(text)),
                Ok(wit::SendVerdict::Modify(changes)) => {
                    match changes.body.as_ref().map(Vec::len) {
                        Some(len) if len > MAX_BODY_LEN => Err(entry.bad_answer(
                            "send",
                            format!("returned a body of {len} bytes (limit {MAX_BODY_LEN})"),
                        )),
                        _ => Ok(changes),
                    }
                }
                Err(fault) => Err(fault),
            };
            match changes {
                Ok(changes) => {
                    if let Some(body) = changes.body {
                        outcome.body = body.into();
                    }
                    if let Some(allowed) = changes.visible_to {
                        outcome.visible_to = Some(match outcome.visible_to {
                            Some(current) => current
                                .into_iter()
                                .filter(|u| allowed.contains(u))
                                .collect(),
                            None => allowed,
                        });
                    }
                }
                Err(fault) if entry.failure() == Failure::FailClosed => {
                    return Err(Refusal::Failed(fault));
                }
                Err(_) => {}
            }
        }
        Ok(outcome)
    }

    /// The seqs of `page` that read hooks hide from `user`.
    pub async fn hidden(
        &self,
        user: &str,
        group: &str,
        page: &[StoredMessage],
    ) -> Result<HashSet<u64>, Refusal> {
        let mut hidden = HashSet::new();
        let chain = self.chain();
        if page.is_empty() || !chain.iter().any(|e| e.has(wit::Hook::Read)) {
            return Ok(hidden);
        }
        let messages: Vec<wit::Stored> = page
            .iter()
            .map(|m| wit::Stored {
                seq: m.seq,
                sender: m.sender.clone(),
                ts_ms: m.ts_ms,
                body: m.body.to_vec(),
            })
            .collect();
        for entry in chain.iter() {
            if !entry.has(wit::Hook::Read) {
                continue;
            }
            let result = entry.filter_read(user, group, &messages).await;
            match result {
                Ok(seqs) => {
                    for seq in seqs {
                        if page.iter().any(|m| m.seq == seq) {
                            hidden.insert(seq);
                        }
                    }
                }
                Err(fault) if entry.failure() == Failure::FailClosed => {
                    return Err(Refusal::Failed(fault));
                }
                Err(_) => {}
            }
        }
        Ok(hidden)
    }

    /// Runs the plugin command `name`.
    pub async fn command(
        &self,
        user: &str,
        group: &str,
        name: &str,
        args: &[String],
    ) -> Result<String, Refusal> {
        let chain = self.chain();
        let entry = chain
            .iter()
            .find(|e| e.has(wit::Hook::Command) && e.commands.iter().any(|c| c == name))
            .ok_or_else(|| Refusal::UnknownCommand(name.to_owned()))?;
        let args = args.to_vec();
        let result = entry.on_command(user, group, name, &args).await;
        match result {
            Ok(Ok(text)) => Ok(text),
            Ok(Err(text)) => Err(Refusal::Rejected(text)),
            Err(fault) => Err(Refusal::Failed(fault)),
        }
    }

    /// The (live, catch-up) ACK policies for a connection: the first plugin's answer, or the defaults.
    pub async fn ack_policies(&self, user: &str, device: &str) -> (AckPolicy, AckPolicy) {
        let (mut live, mut catch_up) = self.default_ack;
        let chain = self.chain();
        for (delivery, slot) in [
            (wit::Delivery::Live, &mut live),
            (wit::Delivery::CatchUp, &mut catch_up),
        ] {
            for entry in chain.iter() {
                if !entry.has(wit::Hook::AckPolicy) {
                    continue;
                }
                let result = entry.ack_policy(user, device, delivery).await;
                if let Ok(Some(p)) = result
                    && p.max_batch > 0
                    && p.retransmit_ms > p.max_delay_ms
                {
                    *slot = AckPolicy {
                        max_delay_ms: p.max_delay_ms,
                        max_batch: p.max_batch,
                        retransmit_ms: p.retransmit_ms,
                    };
                    break;
                }
            }
        }
        (live, catch_up)
    }
}

fn describe(entry: &Loaded) -> Description {
    Description {
        name: entry.name.to_string(),
        version: entry.version.clone(),
        hooks: entry.hooks.iter().map(|h| hook_name(*h)).collect(),
        commands: entry.commands.clone(),
    }
}

fn position_of(entries: &[Arc<Loaded>], name: &str) -> Result<usize, PluginError> {
    entries
        .iter()
        .position(|e| &*e.name == name)
        .ok_or_else(|| PluginError::NotLoaded(name.to_owned()))
}

fn hook_name(hook: wit::Hook) -> &'static str {
    match hook {
        wit::Hook::Send => "send",
        wit::Hook::Read => "read",
        wit::Hook::Command => "command",
        wit::Hook::AckPolicy => "ack-policy",
    }
}

/// Validates a component file against the world without a gateway: what `plugin check` prints.
pub async fn check(bytes: &[u8]) -> Result<Description, PluginError> {
    let dir = tempfile_dir()?;
    let store: Arc<dyn Store> =
        Arc::new(crate::store::EmbeddedStore::open(&dir).map_err(PluginError::engine)?);
    let bus: Arc<dyn crate::bus::Bus> = Arc::new(crate::bus::LocalBus::new());
    let unread = crate::unread::Unread::start(store.clone(), bus.clone(), Default::default());
    let publisher = Arc::new(Publisher::new(store.clone(), bus, unread));
    let plugins = Plugins::new(store, publisher, (DEFAULT_POLICY, DEFAULT_POLICY))?;
    let runtime = plugins.runtime.clone();
    let plugin = Loaded::new(
        runtime,
        PluginSpec::new("check"),
        bytes,
        plugins.store.clone(),
        plugins.publisher.clone(),
        PluginMetrics::default(),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(describe(&plugin?))
}

const DEFAULT_POLICY: AckPolicy = AckPolicy {
    max_delay_ms: 50,
    max_batch: 32,
    retransmit_ms: 5000,
};

fn tempfile_dir() -> Result<std::path::PathBuf, PluginError> {
    let dir = std::env::temp_dir().join(format!("chat-gateway-check-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).map_err(PluginError::engine)?;
    Ok(dir)
}
