//! The gateway's QUIC transport on `quinn-proto`, one event loop per endpoint instead of
//! quinn's task per connection (docs/BENCHMARKS.md, twelfth set).
//!
//! [`Driver`] is the sans-IO core: datagrams and time in, datagrams and [`Event`]s out,
//! testable without sockets. [`Endpoint`] runs it on a socket in one task, with an
//! [`Application`] beside it (the server's pushers); the server's connection tasks hold a
//! [`Link`] each.

mod driver;
mod endpoint;
mod socket;

pub use driver::{ConnKey, Driver, Event, Flushed, Transmitter};
pub use endpoint::{Accepted, Application, Closed, Endpoint, Link, QuicTotals, Streams};
pub use socket::Socket;

#[cfg(test)]
mod tests;
