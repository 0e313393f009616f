//! The UDP socket under a [`Driver`]: GRO reads into it, GSO sends out of it
//! (`quinn::udp`), readiness from tokio.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use quinn::udp::{RecvMeta, UdpSocketState};
use quinn_proto::EcnCodepoint;
use tokio::io::Interest;

use super::{Driver, Transmitter};

/// Bytes per receive slot: a GRO batch of full datagrams.
const RX_CHUNK: usize = 64 * 1024;

pub struct Socket {
    io: Io,
    /// Receive slots and what each received.
    storage: Vec<u8>,
    metas: Vec<RecvMeta>,
}

/// The socket itself: what sends (a [`Transmitter`]) while the receive slots are lent out.
struct Io {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
}

impl Socket {
    /// Takes a bound socket (buffers set as wanted) onto the current runtime.
    pub fn new(socket: std::net::UdpSocket) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Self {
            io: Io {
                socket: tokio::net::UdpSocket::from_std(socket)?,
                state,
            },
            storage: vec![0; quinn::udp::BATCH_SIZE * RX_CHUNK],
            metas: vec![RecvMeta::default(); quinn::udp::BATCH_SIZE],
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.io.socket.local_addr()
    }

    /// Datagrams one send may carry (GSO segments; 1 without GSO).
    pub fn max_datagrams(&self) -> usize {
        self.io.state.max_gso_segments()
    }

    /// Hands what the socket holds to `driver`, at most `batches` reads of it, so that a
    /// loop under load still gets to its timers and sends. Reads only while tokio saw the
    /// socket readable, and clears that once it is empty: for the start of a loop turn.
    /// Returns how many datagrams it handed over.
    pub fn receive(&mut self, driver: &mut Driver, batches: usize) -> usize {
        self.receive_with(driver, batches, |io, bufs, metas| {
            io.socket.try_io(Interest::READABLE, || {
                io.state.recv((&io.socket).into(), bufs, metas)
            })
        })
    }

    /// [`Socket::receive`] in the middle of a long turn: asks the socket itself. tokio
    /// learns of new datagrams only when the loop yields to it, so within one turn its
    /// readiness says "empty" while the socket fills (a 10,000-connection flush overflowed
    /// the receive buffer that way). Leaves tokio's readiness as it is.
    pub fn receive_now(&mut self, driver: &mut Driver, batches: usize) -> usize {
        self.receive_with(driver, batches, |io, bufs, metas| {
            io.state.recv((&io.socket).into(), bufs, metas)
        })
    }

    fn receive_with(
        &mut self,
        driver: &mut Driver,
        batches: usize,
        read: impl Fn(&Io, &mut [IoSliceMut<'_>], &mut [RecvMeta]) -> std::io::Result<usize>,
    ) -> usize {
        let Self { io, storage, metas } = self;
        let mut handed = 0;
        for _ in 0..batches {
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.chunks_mut(RX_CHUNK).map(IoSliceMut::new).collect();
            let Ok(count) = read(io, &mut bufs, metas) else {
                return handed;
            };
            let now = Instant::now();
            for (meta, buf) in metas.iter().zip(bufs.iter()).take(count) {
                let ecn = meta.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
                for segment in buf[..meta.len].chunks(meta.stride.max(1)) {
                    handed += 1;
                    driver.handle_datagram(
                        now,
                        meta.addr,
                        meta.dst_ip,
                        ecn,
                        BytesMut::from(segment),
                        io,
                    );
                }
            }
        }
        handed
    }

    pub async fn readable(&self) {
        let _ = self.io.socket.readable().await;
    }

    pub async fn writable(&self) {
        let _ = self.io.socket.writable().await;
    }
}

impl Transmitter for Socket {
    fn send(&mut self, transmit: &quinn_proto::Transmit, contents: &[u8]) -> bool {
        self.io.send(transmit, contents)
    }
}

impl Transmitter for Io {
    fn send(&mut self, t: &quinn_proto::Transmit, contents: &[u8]) -> bool {
        let transmit = quinn::udp::Transmit {
            destination: t.destination,
            ecn: t
                .ecn
                .and_then(|e| quinn::udp::EcnCodepoint::from_bits(e as u8)),
            contents,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        let sent = self.socket.try_io(Interest::WRITABLE, || {
            self.state.send((&self.socket).into(), &transmit)
        });
        // Other errors lose the datagram, as quinn does: QUIC sends it again.
        !matches!(sent, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}
