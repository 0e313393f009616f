//! Per-connection logic without sockets: [`requests`] answers request frames against the
//! store, plugins and bus; [`publish`] stores and publishes a message; [`visibility`]
//! decides what a user sees of it; [`delivery`] decides what to push, retransmit and catch up.

pub mod delivery;
pub mod publish;
pub mod requests;
pub mod visibility;

pub use delivery::{Delivery, Offer, Push};
pub use publish::Publisher;
pub use requests::{RequestError, Requests, now_ms};
