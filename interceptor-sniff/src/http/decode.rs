//! Body collection with content decoding (gzip, deflate) for display, in bounded memory.
//!
//! Bytes are decoded as they arrive (flate2's streaming writers), so a body never has to
//! be held whole: the first `keep` decoded bytes are kept, the rest only counted, and
//! decoding stops after `max_decoded` bytes so a compression bomb costs bounded time.

use std::io::{self, Write};

use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};

use super::message::Body;

/// Keeps the first `keep` bytes written and counts all of them, up to a hard limit.
struct Keep {
    data: Vec<u8>,
    keep: usize,
    len: u64,
    limit: u64,
}

impl Write for Keep {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len >= self.limit {
            return Err(io::Error::other("decoded body over the limit"));
        }
        let room = self.keep.saturating_sub(self.data.len());
        self.data.extend_from_slice(&buf[..buf.len().min(room)]);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    Gzip(GzDecoder<Keep>),
    Zlib(ZlibDecoder<Keep>),
    /// Some servers send raw deflate for `deflate`; tried when the zlib header is wrong.
    Raw(DeflateDecoder<Keep>),
}

impl Decoder {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Decoder::Gzip(d) => d.write_all(b),
            Decoder::Zlib(d) => d.write_all(b),
            Decoder::Raw(d) => d.write_all(b),
        }
    }
    fn finish(self) -> io::Result<Keep> {
        match self {
            Decoder::Gzip(d) => d.finish(),
            Decoder::Zlib(d) => d.finish(),
            Decoder::Raw(d) => d.finish(),
        }
    }
}

/// Content codings this collector can undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
}

impl Coding {
    /// From a Content-Encoding value; several codings or unknown ones are shown raw.
    pub(crate) fn from_header(value: Option<&str>) -> Coding {
        match value.map(|v| v.trim().to_ascii_lowercase()) {
            Some(v) if v == "gzip" || v == "x-gzip" => Coding::Gzip,
            Some(v) if v == "deflate" => Coding::Deflate,
            _ => Coding::Identity,
        }
    }
}

/// Collects one message body (after transfer decoding).
pub struct Collector {
    raw: Vec<u8>,
    raw_len: u64,
    keep: usize,
    decoder: Option<Box<Decoder>>,
    coding: Coding,
    /// Wire bytes were lost (a capture gap): what is kept is incomplete.
    damaged: bool,
    failed: bool,
    max_decoded: u64,
}

impl Collector {
    // Inlined with `with_buffer` where a message starts, the collector is built in place.
    #[inline]
    pub fn new(coding: Coding, keep: usize, max_decoded: u64) -> Collector {
        let sink = || Keep {
            data: Vec::new(),
            keep,
            len: 0,
            limit: max_decoded,
        };
        let decoder = match coding {
            Coding::Identity => None,
            Coding::Gzip => Some(Box::new(Decoder::Gzip(GzDecoder::new(sink())))),
            Coding::Deflate => Some(Box::new(Decoder::Zlib(ZlibDecoder::new(sink())))),
        };
        Collector {
            raw: Vec::new(),
            raw_len: 0,
            keep,
            decoder,
            coding,
            damaged: false,
            failed: false,
            max_decoded,
        }
    }

    /// Keeps the raw bytes in `buf` (emptied first) rather than in a new buffer.
    #[inline]
    pub(crate) fn with_buffer(mut self, mut buf: Vec<u8>) -> Collector {
        buf.clear();
        self.raw = buf;
        self
    }

    pub fn push(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        let first = self.raw_len == 0;
        let room = self.keep.saturating_sub(self.raw.len());
        self.raw.extend_from_slice(&b[..b.len().min(room)]);
        self.raw_len += b.len() as u64;
        if let Some(d) = self.decoder.as_mut() {
            // RFC 9110 says deflate is zlib-wrapped; a first byte that is not a zlib
            // header (CMF 0x?8) means raw deflate.
            if first && self.coding == Coding::Deflate && b[0] & 0x0f != 8 {
                let keep = self.keep;
                let limit = self.max_decoded;
                **d = Decoder::Raw(DeflateDecoder::new(Keep {
                    data: Vec::new(),
                    keep,
                    len: 0,
                    limit,
                }));
            }
            if d.write_all(b).is_err() {
                self.failed = true;
                self.decoder = None;
            }
        }
    }

    /// `n` wire bytes of the body were never captured.
    pub fn skip(&mut self, n: u64) {
        self.raw_len += n;
        self.damaged = true;
        // The decoder cannot continue over a hole.
        if self.decoder.take().is_some() {
            self.failed = true;
        }
    }

    pub fn wire_len(&self) -> u64 {
        self.raw_len
    }

    /// The body; `cut` says the message ended early (connection closed mid-body).
    pub fn finish(self, cut: bool) -> Body {
        let damaged = self.damaged || cut;
        if let Some(d) = self.decoder {
            if let Ok(k) = d.finish() {
                let truncated = damaged || (k.data.len() as u64) < k.len;
                return Body {
                    data: k.data,
                    len: k.len,
                    truncated,
                };
            }
        }
        // Identity, or decoding failed: show the bytes as sent.
        let truncated = damaged || (self.raw.len() as u64) < self.raw_len;
        Body {
            data: self.raw,
            len: self.raw_len,
            truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_in_pieces_is_decoded_and_cut_at_keep() {
        let text = b"hello hello hello hello world".repeat(10);
        let z = gzip(&text);
        let mut c = Collector::new(Coding::Gzip, 1000, 1 << 20);
        for piece in z.chunks(7) {
            c.push(piece);
        }
        let b = c.finish(false);
        assert_eq!(
            (b.data.as_slice(), b.len, b.truncated),
            (&text[..], text.len() as u64, false)
        );
        let mut c = Collector::new(Coding::Gzip, 10, 1 << 20);
        c.push(&z);
        let b = c.finish(false);
        assert_eq!(
            (b.data.as_slice(), b.len, b.truncated),
            (&text[..10], text.len() as u64, true)
        );
    }

    #[test]
    fn deflate_zlib_and_raw() {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(b"zlib body").unwrap();
        let mut c = Collector::new(Coding::from_header(Some("deflate")), 100, 1 << 20);
        c.push(&e.finish().unwrap());
        assert_eq!(c.finish(false).data, b"zlib body");
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(b"raw body").unwrap();
        let mut c = Collector::new(Coding::Deflate, 100, 1 << 20);
        c.push(&e.finish().unwrap());
        assert_eq!(c.finish(false).data, b"raw body");
    }

    #[test]
    fn bomb_stops_at_limit_and_garbage_falls_back_to_raw() {
        let z = gzip(&vec![0u8; 4 << 20]);
        let mut c = Collector::new(Coding::Gzip, 16, 1 << 20);
        c.push(&z);
        let b = c.finish(false);
        assert!(b.len <= (2 << 20) && b.truncated);
        let mut c = Collector::new(Coding::Gzip, 100, 1 << 20);
        c.push(b"not gzip at all");
        let b = c.finish(false);
        assert_eq!(b.data, b"not gzip at all");
    }
}
