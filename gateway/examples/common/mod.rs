//! What the benchmarks share: a throwaway `redis-server` and a request path without sockets.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use chat_gateway::bus::Bus;
use chat_gateway::plugins::Plugins;
use chat_gateway::session::{Publisher, Requests};
use chat_gateway::store::Store;
use chat_gateway::unread::{FlushPolicy, Unread};
use chat_protocol::AckPolicy;

const POLICY: AckPolicy = AckPolicy {
    max_delay_ms: 50,
    max_batch: 32,
    retransmit_ms: 5000,
};

/// The request path on `store` and `bus` (no plugins) and its unread counter, flushing
/// by `policy`.
pub async fn requests_with(
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    policy: FlushPolicy,
) -> anyhow::Result<(Arc<Requests>, Arc<Unread>)> {
    let unread = Unread::start(store.clone(), bus.clone(), policy);
    let publisher = Arc::new(Publisher::new(store.clone(), bus.clone(), unread.clone()));
    let plugins = Plugins::new(store.clone(), publisher.clone(), (POLICY, POLICY))?;
    Ok((
        Arc::new(Requests::new(store, bus, publisher, plugins)),
        unread,
    ))
}

/// A throwaway `redis-server` with AOF (`everysec`, the usual production setting).
pub struct Redis {
    _server: redis_harness::Redis,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let server = redis_harness::Redis::start(dir.path(), redis_harness::AOF_EVERYSEC)?;
        Ok(Self {
            port: server.port(),
            _server: server,
            _dir: dir,
        })
    }

    /// Calls per command so far (`INFO commandstats`), commands run by scripts included.
    pub fn command_calls(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO", "commandstats"])
            .output()?;
        let mut calls = BTreeMap::new();
        for line in String::from_utf8(out.stdout)?.lines() {
            // cmdstat_hget:calls=12,usec=...
            let Some((name, stats)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let n = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .context("calls=")?
                .parse()?;
            calls.insert(name.to_owned(), n);
        }
        Ok(calls)
    }
}
