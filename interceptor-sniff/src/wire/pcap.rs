//! The classic pcap file format (libpcap's savefile), as written here: the synthetic
//! captures of the tests, benchmarks and examples all come from [`Writer`]. Little-endian,
//! microsecond timestamps. (`capture::file` reads this format in both byte orders and
//! both timestamp resolutions, and pcapng.)

use std::io::{self, Write};

/// Magic number of a file with microsecond timestamps, in the writer's byte order.
pub(crate) const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// Magic number of a file with nanosecond timestamps.
pub(crate) const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// The format version every reader accepts.
pub const VERSION: (u16, u16) = (2, 4);
/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// The file header: 24 bytes.
pub mod file_header {
    pub const LEN: usize = 24;
    pub(crate) const MAGIC: usize = 0;
    pub(crate) const VERSION_MAJOR: usize = 4;
    pub(crate) const VERSION_MINOR: usize = 6;
    pub const SNAPLEN: usize = 16;
    pub(crate) const LINKTYPE: usize = 20;
}

/// Each packet's record header: 16 bytes, then the captured bytes.
pub mod record_header {
    pub const LEN: usize = 16;
    pub(crate) const TS_SECONDS: usize = 0;
    /// Microseconds (or nanoseconds, by the magic number).
    pub(crate) const TS_FRACTION: usize = 4;
    /// Bytes present in the file.
    pub(crate) const CAPTURED_LEN: usize = 8;
    /// Bytes the packet had on the wire.
    pub(crate) const ORIGINAL_LEN: usize = 12;
}

/// Writes a classic pcap, one packet at a time.
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// Writes the file header.
    pub fn new(mut out: W, linktype: u32, snaplen: u32) -> io::Result<Writer<W>> {
        let mut h = [0u8; file_header::LEN];
        put_u32(&mut h, file_header::MAGIC, MAGIC_MICROS);
        h[file_header::VERSION_MAJOR..][..2].copy_from_slice(&VERSION.0.to_le_bytes());
        h[file_header::VERSION_MINOR..][..2].copy_from_slice(&VERSION.1.to_le_bytes());
        put_u32(&mut h, file_header::SNAPLEN, snaplen);
        put_u32(&mut h, file_header::LINKTYPE, linktype);
        out.write_all(&h)?;
        Ok(Writer { out })
    }

    /// One whole packet, at `ts_micros` since the epoch.
    pub fn packet(&mut self, ts_micros: u64, frame: &[u8]) -> io::Result<()> {
        self.packet_cut(ts_micros, frame, frame.len())
    }

    /// One packet of `original_len` bytes of which `captured` is what a snaplen kept.
    pub fn packet_cut(
        &mut self,
        ts_micros: u64,
        captured: &[u8],
        original_len: usize,
    ) -> io::Result<()> {
        let mut h = [0u8; record_header::LEN];
        let len = |n: usize| u32::try_from(n).map_err(|_| io::Error::other("packet over 4 GiB"));
        put_u32(
            &mut h,
            record_header::TS_SECONDS,
            (ts_micros / 1_000_000) as u32,
        );
        put_u32(
            &mut h,
            record_header::TS_FRACTION,
            (ts_micros % 1_000_000) as u32,
        );
        put_u32(&mut h, record_header::CAPTURED_LEN, len(captured.len())?);
        put_u32(&mut h, record_header::ORIGINAL_LEN, len(original_len)?);
        self.out.write_all(&h)?;
        self.out.write_all(captured)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_record_layout() {
        let mut w = Writer::new(Vec::new(), LINKTYPE_ETHERNET, 65535).unwrap();
        w.packet_cut(1_700_000_000_123_456, b"abc", 60).unwrap();
        let b = w.into_inner();
        assert_eq!(b.len(), file_header::LEN + record_header::LEN + 3);
        assert_eq!(b[..4], 0xa1b2_c3d4u32.to_le_bytes());
        assert_eq!(b[4..8], [2, 0, 4, 0]);
        assert_eq!(b[16..20], 65535u32.to_le_bytes());
        assert_eq!(b[20..24], 1u32.to_le_bytes());
        let r = &b[24..];
        assert_eq!(r[..4], 1_700_000_000u32.to_le_bytes());
        assert_eq!(r[4..8], 123_456u32.to_le_bytes());
        assert_eq!(r[8..12], 3u32.to_le_bytes());
        assert_eq!(r[12..16], 60u32.to_le_bytes());
        assert_eq!(&r[16..], b"abc");
    }
}
