//! Per-connection logic without sockets: [`requests`] answers request frames against the
//! store and bus; [`delivery`] decides what to push, retransmit and catch up.

pub mod delivery;
pub mod requests;

pub use delivery::{Delivery, Offer};
pub use requests::{RequestError, Requests};
