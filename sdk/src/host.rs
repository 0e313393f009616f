//! [`Host`]: what the gateway offers a plugin.

use serde::de::DeserializeOwned;

use crate::Level;

/// What the gateway offers a plugin; nothing else is reachable from inside it.
///
/// Each hook receives the host as `&dyn Host`. Inside the gateway it calls the real imports
/// of the `chat:gateway/host` interface; in native unit tests use
/// [`testing::TestHost`](crate::testing::TestHost) instead.
pub trait Host {
    /// Reads `key` from this plugin's own key-value store.
    ///
    /// The store is kept by the gateway: it survives restarts and is shared by every
    /// gateway of a deployment. Keys of other plugins are invisible.
    fn kv_get(&self, key: &str) -> Option<Vec<u8>>;

    /// Writes `value` under `key` in this plugin's key-value store.
    fn kv_set(&self, key: &str, value: &[u8]);

    /// Removes `key` from this plugin's key-value store (nothing happens if it is absent).
    fn kv_delete(&self, key: &str);

    /// Writes to the gateway's log, tagged with the plugin's name.
    fn log(&self, level: Level, message: &str);

    /// Wall-clock time, milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// The operator's configuration for this plugin, as JSON (`{}` when there is none).
    ///
    /// Most plugins want `config_as` (a method of `dyn Host`, below), which parses it.
    fn config(&self) -> String;

    /// Sends `user` a private notice in `group` from this plugin: stored in the group's
    /// log, visible to `user` only. Returns its seq.
    fn notify(&self, group: &str, user: &str, text: &str) -> Result<u64, String>;
}

impl dyn Host + '_ {
    /// Parses [`Host::config`] into `T` with serde.
    ///
    /// An empty configuration (`{}`, `null` or nothing) gives `T::default()` when every
    /// field of `T` has a serde default (`#[serde(default)]` on the struct); a malformed
    /// one gives an `Err` naming the problem (`invalid plugin configuration: ...`), for
    /// example to [`log`](Host::log).
    ///
    /// It is a method of `dyn Host`, the type the hooks receive, rather than of the
    /// trait: a generic trait method could not be called through `&dyn Host`. With a
    /// concrete host, coerce first: `(&test_host as &dyn Host).config_as()`.
    ///
    /// ```
    /// # use chat_plugin_sdk::{Host, testing::TestHost};
    /// #[derive(serde::Deserialize, Default)]
    /// #[serde(default)]
    /// struct Config {
    ///     words: Vec<String>,
    /// }
    ///
    /// let test_host = TestHost::new().with_config(r#"{"words": ["darn"]}"#);
    /// let host: &dyn Host = &test_host;
    /// let config: Config = host.config_as()?;
    /// assert_eq!(config.words, ["darn"]);
    /// # Ok::<(), String>(())
    /// ```
    pub fn config_as<T: DeserializeOwned + Default>(&self) -> Result<T, String> {
        parse_config(&self.config())
    }
}

fn parse_config<T: DeserializeOwned + Default>(json: &str) -> Result<T, String> {
    let json = json.trim();
    if json.is_empty() || json == "null" {
        return Ok(T::default());
    }
    serde_json::from_str(json).map_err(|e| format!("invalid plugin configuration: {e}"))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::testing::TestHost;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        limit: u32,
        names: Option<Vec<String>>,
    }

    impl Default for Config {
        fn default() -> Self {
            Self {
                limit: 100,
                names: None,
            }
        }
    }

    fn parse(json: &str) -> Result<Config, String> {
        let host = TestHost::new().with_config(json);
        let dyn_host: &dyn Host = &host;
        dyn_host.config_as::<Config>()
    }

    #[test]
    fn empty_config_gives_defaults() {
        for json in ["{}", "", "  ", "null", " {} "] {
            assert_eq!(parse(json), Ok(Config::default()), "{json:?}");
        }
    }

    #[test]
    fn fields_override_defaults() {
        assert_eq!(
            parse(r#"{"limit": 3}"#),
            Ok(Config {
                limit: 3,
                names: None
            })
        );
        assert_eq!(
            parse(r#"{"names": ["a", "b"]}"#),
            Ok(Config {
                limit: 100,
                names: Some(vec!["a".into(), "b".into()])
            })
        );
        assert_eq!(parse(r#"{"names": null}"#), Ok(Config::default()));
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let err = parse(r#"{"limit": "many"}"#).unwrap_err();
        assert!(err.starts_with("invalid plugin configuration: "), "{err}");
        assert!(err.contains("line 1"), "{err}");

        let err = parse("{").unwrap_err();
        assert!(err.starts_with("invalid plugin configuration: "), "{err}");

        let err = parse(r#"{"limmit": 3}"#).unwrap_err();
        assert!(err.contains("limmit"), "{err}");
    }
}
