//! Native unit tests of plugins: [`TestHost`], an in-memory [`Host`].
//!
//! ```
//! use chat_plugin_sdk::{Host, Level, testing::TestHost};
//!
//! let host = TestHost::new().with_config(r#"{"limit": 3}"#);
//! host.kv_set("k", b"v");
//! host.log(Level::Warn, "careful");
//! assert_eq!(host.kv_get("k"), Some(b"v".to_vec()));
//! assert_eq!(host.logs(), [(Level::Warn, "careful".to_string())]);
//! assert_eq!(host.notify("g", "ann", "hello"), Ok(1));
//! assert_eq!(host.notices(), [("g".to_string(), "ann".to_string(), "hello".to_string())]);
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use crate::{Host, Level};

/// The clock [`TestHost::new`] starts at: 2023-11-14T22:13:20Z, in ms since the epoch.
pub const DEFAULT_NOW_MS: u64 = 1_700_000_000_000;

/// An in-memory [`Host`] for native unit tests, usable as `&dyn Host`.
///
/// - a key-value store in a `BTreeMap` ([`kv`](Self::kv) shows it, [`kv_get_calls`](Self::kv_get_calls)
///   counts reads);
/// - a configuration JSON string, `{}` unless set;
/// - a clock that stands still at [`DEFAULT_NOW_MS`] unless set or advanced;
/// - records of log lines ([`logs`](Self::logs)) and notices ([`notices`](Self::notices));
///   `notify` returns increasing fake seqs 1, 2, 3, ... (or an error after
///   [`fail_notify`](Self::fail_notify)).
#[derive(Debug)]
pub struct TestHost {
    kv: RefCell<BTreeMap<String, Vec<u8>>>,
    kv_get_calls: Cell<usize>,
    config: RefCell<String>,
    now_ms: Cell<u64>,
    logs: RefCell<Vec<(Level, String)>>,
    notices: RefCell<Vec<(String, String, String)>>,
    next_seq: Cell<u64>,
    notify_error: RefCell<Option<String>>,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    /// An empty store, configuration `{}`, the clock at [`DEFAULT_NOW_MS`].
    pub fn new() -> Self {
        Self {
            kv: RefCell::default(),
            kv_get_calls: Cell::new(0),
            config: RefCell::new("{}".to_string()),
            now_ms: Cell::new(DEFAULT_NOW_MS),
            logs: RefCell::default(),
            notices: RefCell::default(),
            next_seq: Cell::new(1),
            notify_error: RefCell::default(),
        }
    }

    /// Sets the configuration JSON (builder style).
    pub fn with_config(self, json: impl Into<String>) -> Self {
        self.set_config(json);
        self
    }

    /// Sets the configuration JSON that [`Host::config`] returns.
    pub fn set_config(&self, json: impl Into<String>) {
        *self.config.borrow_mut() = json.into();
    }

    /// Sets the clock.
    pub fn set_now_ms(&self, now_ms: u64) {
        self.now_ms.set(now_ms);
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.set(self.now_ms.get() + ms);
    }

    /// A copy of the whole key-value store.
    pub fn kv(&self) -> BTreeMap<String, Vec<u8>> {
        self.kv.borrow().clone()
    }

    /// How many times [`Host::kv_get`] was called.
    pub fn kv_get_calls(&self) -> usize {
        self.kv_get_calls.get()
    }

    /// The log lines written so far, oldest first.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.logs.borrow().clone()
    }

    /// The notices sent so far, oldest first, as `(group, user, text)`.
    pub fn notices(&self) -> Vec<(String, String, String)> {
        self.notices.borrow().clone()
    }

    /// Makes every later [`Host::notify`] fail with `error` (and record nothing).
    pub fn fail_notify(&self, error: impl Into<String>) {
        *self.notify_error.borrow_mut() = Some(error.into());
    }
}

impl Host for TestHost {
    fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.kv_get_calls.set(self.kv_get_calls.get() + 1);
        self.kv.borrow().get(key).cloned()
    }

    fn kv_set(&self, key: &str, value: &[u8]) {
        self.kv.borrow_mut().insert(key.to_string(), value.to_vec());
    }

    fn kv_delete(&self, key: &str) {
        self.kv.borrow_mut().remove(key);
    }

    fn log(&self, level: Level, message: &str) {
        // Shown by `cargo test` for failing tests (and with `--nocapture`).
        eprintln!("[plugin {level:?}] {message}");
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    fn config(&self) -> String {
        self.config.borrow().clone()
    }

    fn notify(&self, group: &str, user: &str, text: &str) -> Result<u64, String> {
        if let Some(error) = self.notify_error.borrow().clone() {
            return Err(error);
        }
        self.notices
            .borrow_mut()
            .push((group.to_string(), user.to_string(), text.to_string()));
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_dyn(host: &TestHost) -> &dyn Host {
        host
    }

    #[test]
    fn kv_set_get_delete() {
        let test_host = TestHost::new();
        let host = as_dyn(&test_host);
        assert_eq!(host.kv_get("a"), None);
        host.kv_set("a", b"1");
        host.kv_set("b", b"2");
        host.kv_set("a", b"3");
        assert_eq!(host.kv_get("a"), Some(b"3".to_vec()));
        host.kv_delete("a");
        host.kv_delete("missing");
        assert_eq!(host.kv_get("a"), None);
        assert_eq!(
            test_host.kv(),
            BTreeMap::from([("b".to_string(), b"2".to_vec())])
        );
        assert_eq!(test_host.kv_get_calls(), 3);
    }

    #[test]
    fn config_defaults_to_empty_object_and_is_settable() {
        let test_host = TestHost::new();
        assert_eq!(as_dyn(&test_host).config(), "{}");
        test_host.set_config(r#"{"a":1}"#);
        assert_eq!(as_dyn(&test_host).config(), r#"{"a":1}"#);
        assert_eq!(TestHost::new().with_config("[]").config(), "[]");
    }

    #[test]
    fn clock_is_fixed_until_moved() {
        let test_host = TestHost::default();
        let host = as_dyn(&test_host);
        assert_eq!(host.now_ms(), DEFAULT_NOW_MS);
        assert_eq!(host.now_ms(), DEFAULT_NOW_MS);
        test_host.advance_ms(250);
        assert_eq!(host.now_ms(), DEFAULT_NOW_MS + 250);
        test_host.set_now_ms(5);
        assert_eq!(host.now_ms(), 5);
    }

    #[test]
    fn records_logs_and_notices() {
        let test_host = TestHost::new();
        let host = as_dyn(&test_host);
        host.log(Level::Info, "one");
        host.log(Level::Error, "two");
        assert_eq!(
            test_host.logs(),
            [
                (Level::Info, "one".to_string()),
                (Level::Error, "two".to_string())
            ]
        );

        assert_eq!(host.notify("g1", "ann", "hi"), Ok(1));
        assert_eq!(host.notify("g2", "bob", "yo"), Ok(2));
        assert_eq!(
            test_host.notices(),
            [
                ("g1".to_string(), "ann".to_string(), "hi".to_string()),
                ("g2".to_string(), "bob".to_string(), "yo".to_string()),
            ]
        );

        test_host.fail_notify("no such group");
        assert_eq!(
            host.notify("g3", "cy", "x"),
            Err("no such group".to_string())
        );
        assert_eq!(test_host.notices().len(), 2);
    }
}
