//! Primitive encoding (big-endian integers, length-prefixed strings, bytes and
//! lists) and the length-prefixed frame decoder.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Frame, MAX_FRAME_LEN, MAX_LIST_LEN};

/// Why bytes could not be turned into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`]; the stream cannot be resynchronised.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// A zero-length frame (it has no type byte).
    #[error("empty frame")]
    Empty,
    /// A well-delimited frame of a type this side does not know; it was skipped.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// A well-delimited frame whose payload does not parse as its type.
    #[error("malformed {frame} frame: {reason}")]
    Malformed { frame: &'static str, reason: String },
}

/// Splits a byte stream into frames: feed it whatever arrived, then take frames out.
///
/// Sans-IO: the caller owns the socket. After [`DecodeError::TooLarge`] or
/// [`DecodeError::Empty`] the stream is unusable; after `UnknownType` or
/// `Malformed` the offending frame has been consumed and decoding may go on.
#[derive(Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::TooLarge(len));
        }
        if len == 0 {
            return Err(DecodeError::Empty);
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len).freeze();
        Frame::decode(body).map(Some)
    }
}

/// Writes primitives into a frame under construction.
pub(crate) struct Writer {
    buf: BytesMut,
}

impl Writer {
    /// Starts a frame: reserves the length prefix and writes the type byte.
    pub(crate) fn frame(frame_type: u8, capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(5 + capacity);
        buf.put_u32(0);
        buf.put_u8(frame_type);
        Self { buf }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.put_u8(v);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.put_u16(v);
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.put_u32(v);
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.put_u64(v);
        self
    }
    /// `u16` byte length, then UTF-8. Longer strings are cut at a character boundary.
    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        let mut len = v.len().min(u16::MAX as usize);
        while !v.is_char_boundary(len) {
            len -= 1;
        }
        self.buf.put_u16(len as u16);
        self.buf.put_slice(&v.as_bytes()[..len]);
        self
    }
    /// `u32` byte length, then the bytes.
    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.put_u32(v.len() as u32);
        self.buf.put_slice(v);
        self
    }
    /// `u16` count, then each item.
    pub(crate) fn list<T>(
        &mut self,
        items: &[T],
        mut each: impl FnMut(&mut Self, &T),
    ) -> &mut Self {
        self.buf.put_u16(items.len().min(u16::MAX as usize) as u16);
        for item in items.iter().take(u16::MAX as usize) {
            each(self, item);
        }
        self
    }

    /// Fills in the length prefix and returns the whole frame.
    pub(crate) fn finish(mut self) -> Bytes {
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.buf.freeze()
    }
}

/// Reads primitives out of one frame's payload.
pub(crate) struct Reader {
    buf: Bytes,
    frame: &'static str,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, frame: &'static str) -> Self {
        Self { buf, frame }
    }

    pub(crate) fn error(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError::Malformed {
            frame: self.frame,
            reason: reason.into(),
        }
    }

    fn need(&self, n: usize, what: &str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(self.error(format!("truncated {what}")));
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1, "u8")?;
        Ok(self.buf.get_u8())
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2, "u16")?;
        Ok(self.buf.get_u16())
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4, "u32")?;
        Ok(self.buf.get_u32())
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8, "u64")?;
        Ok(self.buf.get_u64())
    }
    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.error(format!("boolean byte {other}"))),
        }
    }
    pub(crate) fn str(&mut self) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        self.need(len, "string")?;
        let raw = self.buf.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| self.error("string is not UTF-8"))
    }
    pub(crate) fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u32()? as usize;
        self.need(len, "bytes")?;
        Ok(self.buf.split_to(len))
    }
    pub(crate) fn list<T>(
        &mut self,
        mut each: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let count = self.u16()? as usize;
        if count > MAX_LIST_LEN {
            return Err(self.error(format!("list of {count} exceeds {MAX_LIST_LEN}")));
        }
        // Every item takes at least one byte, so a lying count cannot make us over-allocate.
        let mut items = Vec::with_capacity(count.min(self.buf.remaining()));
        for _ in 0..count {
            items.push(each(self)?);
        }
        Ok(items)
    }

    /// Rejects trailing bytes, so every byte of a frame has a meaning.
    pub(crate) fn end(self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            return Err(self.error(format!("{} trailing bytes", self.buf.remaining())));
        }
        Ok(())
    }
}
