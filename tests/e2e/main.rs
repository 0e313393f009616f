//! End-to-end tests: real gateways on loopback QUIC, driven through the client library
//! (and, in `cli`, through the `chat` and `chat-gateway` binaries).

mod admin;
mod auth;
mod bad_input;
mod cli;
mod delivery;
mod focus;
mod groups;
mod history;
mod messaging;
mod offline;
mod plugins;
mod scale_out;
mod store;
mod unread;
