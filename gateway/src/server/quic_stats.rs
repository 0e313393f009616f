//! QUIC transport counters of every connection, open and closed: datagrams and the send
//! calls that carried them (several per call with GSO), bytes, packets lost, congestion
//! events. The endpoint loop sums them when asked (`Shared::refresh_quic_totals`, before
//! `/metrics` is encoded), so the packet path pays nothing for them.

use std::sync::Mutex;

pub use crate::quic::QuicTotals;

/// The totals as last read from the endpoint.
#[derive(Default)]
pub(crate) struct QuicStats {
    last: Mutex<QuicTotals>,
}

impl QuicStats {
    pub fn set(&self, totals: QuicTotals) {
        *self.last.lock().expect("quic stats lock") = totals;
    }

    pub fn totals(&self) -> QuicTotals {
        *self.last.lock().expect("quic stats lock")
    }
}
