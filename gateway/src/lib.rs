//! chat-gateway: a QUIC gateway for very large group chats.
//!
//! Layout (see `docs/ARCHITECTURE.md` for the whole codemap):
//! - [`server`]: the QUIC shell — connection tasks, push stream writer.
//! - [`quic`]: QUIC on `quinn-proto`, every connection of an endpoint on one event loop.
//! - [`session`]: per-connection logic without sockets — request handling, delivery state.
//! - [`node`]: this gateway's local map of connections ↔ users ↔ groups, and fan-out.
//! - [`store`]: groups, members, group logs, cursors ([`store::EmbeddedStore`] by default).
//! - [`bus`]: events between gateways ([`bus::LocalBus`] on a single node, [`bus::RedisBus`]).
//! - [`redis_target`]: reaching one Redis server or a Redis Cluster, for store and bus.
//! - [`unread`]: unread counts, staged per group and flushed as one `+k` per member.
//! - [`plugins`]: the sandboxed WebAssembly policy chain (wasmtime, `wit/`).
//! - [`admin`], [`metrics`]: the operators' HTTP API and the Prometheus metrics it serves.
//! - [`auth`], [`tls`], [`config`]: tokens, certificates, settings.

pub mod admin;
pub mod auth;
pub mod bus;
pub mod config;
pub mod metrics;
pub mod node;
pub mod plugins;
pub mod quic;
pub mod redis_target;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
pub mod unread;

pub use config::Config;
pub use server::{Gateway, StartError};
