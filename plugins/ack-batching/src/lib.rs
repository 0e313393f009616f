//! ACK batching: the ACK policy for live pushes and for catching up, from the operator's
//! configuration (JSON, every field optional; these are the defaults):
//!
//! ```json
//! {
//!   "live":     {"max_delay_ms": 5000, "max_batch": 64,  "retransmit_ms": 15000},
//!   "catch_up": {"max_delay_ms": 200,  "max_batch": 256, "retransmit_ms": 10000}
//! }
//! ```
//!
//! An invalid configuration (unparsable, `max_batch` 0, or `retransmit_ms` not above
//! `max_delay_ms`) is logged as a warning and the plugin answers `None`, so the gateway
//! keeps its own default.

use chat_plugin_sdk::{AckPolicy, Delivery, Hook, Host, Info, Level, Plugin, export_plugin};
use serde::Deserialize;

/// The plugin.
pub struct AckBatching;

/// The plugin's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The policy for live pushes.
    pub live: Policy,
    /// The policy for catching up after being offline.
    pub catch_up: Policy,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            live: Policy::LIVE,
            catch_up: Policy::CATCH_UP,
        }
    }
}

/// One policy as configured; a missing field takes its default for that kind of delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Longest a receiver may hold an ACK back to batch it.
    #[serde(default)]
    pub max_delay_ms: Option<u32>,
    /// A receiver ACKs at once when this many pushes are waiting (at least 1).
    #[serde(default)]
    pub max_batch: Option<u16>,
    /// The gateway resends a push not acknowledged within this time (more than
    /// `max_delay_ms`).
    #[serde(default)]
    pub retransmit_ms: Option<u32>,
}

impl Policy {
    const LIVE: Self = Self::new(5_000, 64, 15_000);
    const CATCH_UP: Self = Self::new(200, 256, 10_000);

    const fn new(max_delay_ms: u32, max_batch: u16, retransmit_ms: u32) -> Self {
        Self {
            max_delay_ms: Some(max_delay_ms),
            max_batch: Some(max_batch),
            retransmit_ms: Some(retransmit_ms),
        }
    }

    /// This policy with its missing fields taken from `defaults`, checked.
    fn resolve(self, defaults: Self, what: &str) -> Result<AckPolicy, String> {
        let policy = AckPolicy {
            max_delay_ms: self
                .max_delay_ms
                .or(defaults.max_delay_ms)
                .unwrap_or_default(),
            max_batch: self.max_batch.or(defaults.max_batch).unwrap_or_default(),
            retransmit_ms: self
                .retransmit_ms
                .or(defaults.retransmit_ms)
                .unwrap_or_default(),
        };
        if policy.max_batch == 0 {
            return Err(format!("{what}: max_batch must be at least 1"));
        }
        if policy.retransmit_ms <= policy.max_delay_ms {
            return Err(format!(
                "{what}: retransmit_ms ({}) must be greater than max_delay_ms ({})",
                policy.retransmit_ms, policy.max_delay_ms
            ));
        }
        Ok(policy)
    }
}

impl Plugin for AckBatching {
    fn info() -> Info {
        Info {
            name: "ack-batching".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hooks: vec![Hook::AckPolicy],
            commands: vec![],
        }
    }

    fn ack_policy(
        host: &dyn Host,
        _user: &str,
        _device: &str,
        delivery: Delivery,
    ) -> Option<AckPolicy> {
        let resolved = host
            .config_as::<Config>()
            .and_then(|config| match delivery {
                Delivery::Live => config.live.resolve(Policy::LIVE, "live"),
                Delivery::CatchUp => config.catch_up.resolve(Policy::CATCH_UP, "catch_up"),
            });
        match resolved {
            Ok(policy) => Some(policy),
            Err(e) => {
                host.log(
                    Level::Warn,
                    &format!("{e}; keeping the gateway's default ACK policy"),
                );
                None
            }
        }
    }
}

export_plugin!(AckBatching);

#[cfg(test)]
mod tests {
    use chat_plugin_sdk::testing::TestHost;

    use super::*;

    fn policy(host: &TestHost, delivery: Delivery) -> Option<AckPolicy> {
        AckBatching::ack_policy(host, "ann", "phone", delivery)
    }

    const fn ack(max_delay_ms: u32, max_batch: u16, retransmit_ms: u32) -> Option<AckPolicy> {
        Some(AckPolicy {
            max_delay_ms,
            max_batch,
            retransmit_ms,
        })
    }

    #[test]
    fn describes_itself() {
        let info = AckBatching::info();
        assert_eq!(info.name, "ack-batching");
        assert_eq!(info.hooks, [Hook::AckPolicy]);
    }

    #[test]
    fn defaults_per_delivery_kind() {
        let host = TestHost::new();
        assert_eq!(policy(&host, Delivery::Live), ack(5_000, 64, 15_000));
        assert_eq!(policy(&host, Delivery::CatchUp), ack(200, 256, 10_000));
        assert!(host.logs().is_empty());
    }

    #[test]
    fn configured_fields_override_defaults_one_by_one() {
        let host = TestHost::new().with_config(
            r#"{"live": {"max_batch": 8}, "catch_up": {"max_delay_ms": 1000, "retransmit_ms": 30000}}"#,
        );
        assert_eq!(policy(&host, Delivery::Live), ack(5_000, 8, 15_000));
        assert_eq!(policy(&host, Delivery::CatchUp), ack(1_000, 256, 30_000));
    }

    #[test]
    fn invalid_policy_logs_a_warning_and_keeps_the_default() {
        let host = TestHost::new().with_config(r#"{"live": {"max_delay_ms": 15000}}"#);
        assert_eq!(policy(&host, Delivery::Live), None);
        let logs = host.logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].0, Level::Warn);
        assert!(
            logs[0]
                .1
                .contains("retransmit_ms (15000) must be greater than max_delay_ms (15000)"),
            "{logs:?}"
        );
        // The other kind is still valid.
        assert_eq!(policy(&host, Delivery::CatchUp), ack(200, 256, 10_000));

        let host = TestHost::new().with_config(r#"{"catch_up": {"max_batch": 0}}"#);
        assert_eq!(policy(&host, Delivery::CatchUp), None);
        assert!(
            host.logs()[0]
                .1
                .contains("catch_up: max_batch must be at least 1")
        );
        assert_eq!(policy(&host, Delivery::Live), ack(5_000, 64, 15_000));
    }

    #[test]
    fn unparsable_config_logs_a_warning_and_keeps_the_default() {
        for json in [
            r#"{"live": {"max_batch": 70000}}"#,
            r#"{"live": 3}"#,
            r#"{"bogus": 1}"#,
            "{",
        ] {
            let host = TestHost::new().with_config(json);
            assert_eq!(policy(&host, Delivery::Live), None, "{json}");
            let logs = host.logs();
            assert_eq!(logs.len(), 1, "{json}");
            assert_eq!(logs[0].0, Level::Warn);
            assert!(
                logs[0].1.starts_with("invalid plugin configuration"),
                "{logs:?}"
            );
        }
    }
}
