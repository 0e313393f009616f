//! The gateway's QUIC transport on `quinn-proto`, one event loop per endpoint instead of
//! quinn's task per connection (docs/BENCHMARKS.md, twelfth set).
//!
//! [`Driver`] is the sans-IO core: datagrams and time in, datagrams and [`Event`]s out,
//! testable without sockets. Not yet what [`crate::server`] runs on: the server still
//! drives its connections with quinn; moving it here is the next step of the fan-out
//! work (the socket loop, and the pusher writing from inside it).

mod driver;

pub use driver::{ConnKey, Driver, Event, Flushed, Transmitter};

#[cfg(test)]
mod tests;
