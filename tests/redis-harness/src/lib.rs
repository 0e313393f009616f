//! Throwaway `redis-server` processes on free loopback ports, for the tests, the benchmarks
//! and `chat-bench` — never the machine's own instance on 6379.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Append-only file with an fsync once a second: the usual production setting.
pub const AOF_EVERYSEC: &[&str] = &["--appendonly", "yes", "--appendfsync", "everysec"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start redis-server ({0}): install it, e.g. `apt-get install redis-server`")]
    Spawn(std::io::Error),
    #[error("no free loopback port: {0}")]
    Port(std::io::Error),
    #[error("redis-server did not come up on port {0}")]
    NotListening(u16),
}

/// Starts `redis-server` on `port`, bound to loopback, without RDB snapshots, its files in
/// `dir`, with `args` added (persistence, cluster mode, ...).
pub fn spawn(port: u16, dir: &Path, args: &[&str]) -> Result<Child, Error> {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .map_err(Error::Spawn)
}

/// A loopback TCP port nothing listens on right now.
pub fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::Port)?;
    Ok(listener.local_addr().map_err(Error::Port)?.port())
}

/// Blocks until something accepts connections on `port`, for at most `patience`.
pub fn wait_for_port(port: u16, patience: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + patience;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(Error::NotListening(port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A `redis-server` on a free port, up and accepting connections; killed when dropped.
pub struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts one with its files in `dir` and `args` added (see [`spawn`]).
    pub fn start(dir: &Path, args: &[&str]) -> Result<Self, Error> {
        let port = free_port()?;
        let child = spawn(port, dir, args)?;
        // Killed on drop if it never comes up.
        let redis = Self { child, port };
        wait_for_port(port, Duration::from_secs(10))?;
        Ok(redis)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, e.g. to read its CPU time.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
