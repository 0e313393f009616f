//! QUIC transport counters of every connection, open and closed: datagrams and the send
//! calls that carried them (several per call with GSO), bytes, packets lost, congestion
//! events. quinn keeps them per connection; they are summed when `/metrics` is read, so the
//! packet path pays nothing for them.

use std::collections::HashMap;
use std::sync::Mutex;

use quinn::{Connection, ConnectionStats};

/// Totals over connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuicTotals {
    pub datagrams_sent: u64,
    /// System calls that sent them (one per datagram without GSO, fewer with it).
    pub send_calls: u64,
    pub bytes_sent: u64,
    pub datagrams_received: u64,
    pub bytes_received: u64,
    pub packets_lost: u64,
    pub congestion_events: u64,
}

impl QuicTotals {
    fn add(&mut self, stats: &ConnectionStats) {
        self.datagrams_sent += stats.udp_tx.datagrams;
        self.send_calls += stats.udp_tx.ios;
        self.bytes_sent += stats.udp_tx.bytes;
        self.datagrams_received += stats.udp_rx.datagrams;
        self.bytes_received += stats.udp_rx.bytes;
        self.packets_lost += stats.path.lost_packets;
        self.congestion_events += stats.path.congestion_events;
    }
}

#[derive(Default)]
pub(crate) struct QuicStats {
    /// Open connections by `Connection::stable_id`.
    open: Mutex<HashMap<usize, Connection>>,
    /// What connections that ended had counted.
    closed: Mutex<QuicTotals>,
}

impl QuicStats {
    /// Counts `connection` until the returned guard is dropped.
    pub fn track<'a>(&'a self, connection: &Connection) -> Tracked<'a> {
        let id = connection.stable_id();
        self.open
            .lock()
            .expect("quic stats lock")
            .insert(id, connection.clone());
        Tracked { stats: self, id }
    }

    pub fn totals(&self) -> QuicTotals {
        // `open` first, as a closing connection takes them: it is counted in exactly one.
        let open = self.open.lock().expect("quic stats lock");
        let mut totals = *self.closed.lock().expect("quic stats lock");
        for connection in open.values() {
            totals.add(&connection.stats());
        }
        totals
    }
}

/// A connection counted among the open ones; its counts move to the closed totals on drop.
pub(crate) struct Tracked<'a> {
    stats: &'a QuicStats,
    id: usize,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        // Moved under the `open` lock: a scrape never sees it in neither (a counter that
        // went down would read as a reset).
        let mut open = self.stats.open.lock().expect("quic stats lock");
        if let Some(connection) = open.remove(&self.id) {
            self.stats
                .closed
                .lock()
                .expect("quic stats lock")
                .add(&connection.stats());
        }
    }
}
