//! Capture files: pcap (micro- and nanosecond, either byte order) and pcapng (section,
//! interface and enhanced/simple packet blocks), read in place from a memory map, or from a
//! pipe (`-I -`, `-I <(tcpdump -w - …)`) record by record.
//!
//! libpcap reads files through stdio, one packet copied at a time; mapping the file and
//! borrowing each packet from the map removes a copy and most system calls from an
//! offline run, which is where the sniffer's speed is measured. Filters still come from
//! libpcap (compiled once per link type, run in user space). A pipe cannot be mapped, and
//! may never end (tcpdump writing live), so [`Stream`] holds one record at a time and hands
//! each packet over as soon as it is in.
//!
//! Everything in a file is untrusted: a field that cannot be right (a block length that
//! runs past the end, a timestamp no clock can hold) ends the reading with a
//! [`FileError`] naming the value and where it lies; what came before is still decoded.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::wire::pcap::{MAGIC_MICROS, MAGIC_NANOS};

/// Why a capture file cannot be opened; the caller names the flag that gave the path.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    // The cause is in the message (and so not a `source`: `{:#}` would say it twice).
    #[error("{path}: {err}")]
    Open { path: String, err: io::Error },
    /// tcpdump's words for it; mmap's own ("No such device") says nothing useful.
    #[error("{0}: is a directory")]
    Directory(String),
    #[error("{0}: empty file")]
    Empty(String),
    #[error("{path}: mmap: {err}")]
    Map { path: String, err: io::Error },
}

/// Why a capture file cannot be read on: damage, named with the offending value and its
/// offset from the start of the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("too short for a capture file ({0} bytes)")]
    TooShort(usize),
    #[error("truncated pcap header ({0} bytes)")]
    TruncatedPcapHeader(usize),
    #[error("truncated pcapng section header ({0} bytes)")]
    TruncatedSectionHeader(usize),
    #[error("pcapng: bad byte-order magic {0:#x}")]
    ByteOrder(u32),
    #[error("not a pcap or pcapng file (magic {0:#010x})")]
    Magic(u32),
    #[error("pcap: truncated record header at the end (offset {at})")]
    TruncatedRecordHeader { at: u64 },
    #[error("pcap: truncated packet at the end (offset {at}, {caplen} bytes announced)")]
    TruncatedPacket { at: u64, caplen: u32 },
    #[error("pcapng: bad block length {len} at offset {at}")]
    BlockLength { len: u32, at: u64 },
    #[error("pcapng: packet for undeclared interface {id} at offset {at}")]
    UndeclaredInterface { id: u32, at: u64 },
    #[error("pcapng: packet before any interface at offset {at}")]
    PacketBeforeInterface { at: u64 },
    #[error("pcapng: packet longer than its block ({caplen} bytes) at offset {at}")]
    PacketBeyondBlock { caplen: u32, at: u64 },
    #[error("pcapng: interface at offset {at}: if_tsresol {resol:#04x} is no usable resolution")]
    Resolution { resol: u8, at: u64 },
    /// A time no `SystemTime` holds (e.g. if_tsresol 0, seconds, and a count near 2^64).
    #[error(
        "{format}: packet at offset {at}: timestamp {raw} (units of 1/{units} s) is out of range"
    )]
    Timestamp {
        format: &'static str,
        raw: u64,
        units: u64,
        at: u64,
    },
    /// Read from a pipe: a record is held whole, so its size is bounded.
    #[error("record of {len} bytes at offset {at}: more than the {max} bytes a record may have")]
    RecordTooLarge { len: u64, at: u64, max: usize },
    #[error("reading: {0}")]
    Read(io::Error),
}

impl From<io::Error> for FileError {
    fn from(e: io::Error) -> FileError {
        FileError::Read(e)
    }
}

/// A read-only memory map of a whole file.
pub(crate) struct Mapped {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and owned; nothing mutates it, so it can be moved to
// and read from any thread.
unsafe impl Send for Mapped {}
// SAFETY: as for Send: shared references only read the immutable mapping.
unsafe impl Sync for Mapped {}

/// pcap's magic numbers as read in our byte order, written in the other one.
const MAGIC_MICROS_SWAPPED: u32 = MAGIC_MICROS.swap_bytes();
const MAGIC_NANOS_SWAPPED: u32 = MAGIC_NANOS.swap_bytes();

/// Largest file mapped with `MAP_POPULATE`.
const POPULATE_MAX: usize = 256 << 20;

impl Mapped {
    /// Maps `len` bytes of the regular file `f` (`name` for errors).
    pub fn map(f: &File, len: u64, name: &str) -> Result<Mapped, OpenError> {
        let Ok(len) = usize::try_from(len) else {
            return Err(OpenError::Map {
                path: name.to_string(),
                err: io::Error::from_raw_os_error(libc::EFBIG),
            });
        };
        if len == 0 {
            return Err(OpenError::Empty(name.to_string()));
        }
        // A file of moderate size has its page tables filled in at once: taking a page fault
        // every few pages on the way through cost a few percent of an offline run. A big
        // one is faulted in as it is read, so the first packets need not wait for all of it.
        let populate = if len <= POPULATE_MAX {
            libc::MAP_POPULATE
        } else {
            0
        };
        // SAFETY: mapping a file we opened read-only; checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | populate,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(OpenError::Map {
                path: name.to_string(),
                err: io::Error::last_os_error(),
            });
        }
        // SAFETY: valid mapping of len bytes; advice failure is harmless.
        unsafe { libc::madvise(ptr, len, libc::MADV_SEQUENTIAL) };
        Ok(Mapped {
            ptr: ptr as *const u8,
            len,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len describe a live read-only mapping owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// One packet borrowed from the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilePacket<'a> {
    pub ts: SystemTime,
    pub data: &'a [u8],
    pub len: u32,
    /// pcap LINKTYPE of the interface it was captured on.
    pub linktype: i32,
}

/// A packet found by [`Reader`]: where its bytes lie in the image, and its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Located {
    ts: SystemTime,
    at: usize,
    caplen: usize,
    len: u32,
    linktype: i32,
}

/// What one record of the image was.
enum Step {
    Packet(Located),
    /// A block that carries no packet (section or interface description, statistics…).
    Other,
    End,
}

#[derive(Clone, Copy, Debug)]
struct Iface {
    linktype: i32,
    /// Timestamp units per second.
    units: u64,
}

enum Format {
    Pcap {
        swapped: bool,
        nanos: bool,
        linktype: i32,
    },
    Pcapng {
        swapped: bool,
        ifaces: Vec<Iface>,
    },
}

/// Walks the packets of a pcap or pcapng image.
pub struct Reader {
    format: Format,
    /// Where the next record starts in the bytes handed to `next`.
    at: usize,
    /// Offset in the file of those bytes' start (a stream drops what it has read).
    base: u64,
}

fn u16_at(b: &[u8], at: usize, swapped: bool) -> Option<u16> {
    let v = u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?);
    Some(if swapped { v.swap_bytes() } else { v })
}

fn u32_at(b: &[u8], at: usize, swapped: bool) -> Option<u32> {
    let v = u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?);
    Some(if swapped { v.swap_bytes() } else { v })
}

/// `units_total` units of 1/`units` s after the epoch, if a `SystemTime` can hold it.
fn ts_from(units_total: u64, units: u64) -> Option<SystemTime> {
    let units = units.max(1);
    let secs = units_total / units;
    let rem = units_total % units;
    // Below 10^9 (rem < units), so it fits in u32.
    let nanos = (u128::from(rem) * 1_000_000_000 / u128::from(units)) as u32;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Timestamp units per second for a pcapng if_tsresol byte: a power of ten, or of two when
/// the top bit is set. None when the power does not fit in 64 bits.
fn tsresol_units(r: u8) -> Option<u64> {
    if r & 0x80 != 0 {
        1u64.checked_shl(u32::from(r & 0x7f))
    } else {
        10u64.checked_pow(u32::from(r))
    }
}

impl Reader {
    pub fn new(b: &[u8]) -> Result<Reader, FileError> {
        let magic = u32_at(b, 0, false).ok_or(FileError::TooShort(b.len()))?;
        let format = match magic {
            MAGIC_MICROS | MAGIC_NANOS | MAGIC_MICROS_SWAPPED | MAGIC_NANOS_SWAPPED => {
                let swapped = matches!(magic, MAGIC_MICROS_SWAPPED | MAGIC_NANOS_SWAPPED);
                let nanos = matches!(magic, MAGIC_NANOS | MAGIC_NANOS_SWAPPED);
                let linktype = (u32_at(b, 20, swapped)
                    .ok_or(FileError::TruncatedPcapHeader(b.len()))?
                    & 0x0fff_ffff) as i32;
                return Ok(Reader {
                    format: Format::Pcap {
                        swapped,
                        nanos,
                        linktype,
                    },
                    at: 24,
                    base: 0,
                });
            }
            0x0a0d0d0a => {
                let bom = u32_at(b, 8, false).ok_or(FileError::TruncatedSectionHeader(b.len()))?;
                let swapped = match bom {
                    0x1a2b3c4d => false,
                    0x4d3c2b1a => true,
                    _ => return Err(FileError::ByteOrder(bom)),
                };
                Format::Pcapng {
                    swapped,
                    ifaces: Vec::new(),
                }
            }
            _ => return Err(FileError::Magic(magic)),
        };
        Ok(Reader {
            format,
            at: 0,
            base: 0,
        })
    }

    /// The link type of the first interface (pcapng: once its description was read).
    pub fn first_linktype(&self, b: &[u8]) -> Option<i32> {
        match &self.format {
            Format::Pcap { linktype, .. } => Some(*linktype),
            Format::Pcapng { swapped, .. } => {
                // Find the first interface description block.
                let mut at = 0usize;
                while let (Some(kind), Some(len)) =
                    (u32_at(b, at, *swapped), u32_at(b, at + 4, *swapped))
                {
                    if kind == 1 {
                        return u16_at(b, at + 8, *swapped).map(i32::from);
                    }
                    if len < 12 {
                        return None;
                    }
                    at = at.checked_add(len as usize)?;
                }
                None
            }
        }
    }

    /// The next packet, None at the end; a damaged file ends with an error.
    pub fn next<'a>(&mut self, b: &'a [u8]) -> Result<Option<FilePacket<'a>>, FileError> {
        loop {
            match self.step(b)? {
                Step::Packet(p) => {
                    // `step` checked the range; a miss here would be a bug, reported as
                    // damage at that offset rather than a panic.
                    let data = b.get(p.at..p.at + p.caplen).ok_or_else(|| {
                        FileError::PacketBeyondBlock {
                            caplen: p.caplen as u32,
                            at: self.offset(p.at),
                        }
                    })?;
                    return Ok(Some(FilePacket {
                        ts: p.ts,
                        data,
                        len: p.len,
                        linktype: p.linktype,
                    }));
                }
                Step::Other => {}
                Step::End => return Ok(None),
            }
        }
    }

    /// The file offset of `at` in the bytes being read.
    fn offset(&self, at: usize) -> u64 {
        self.base + at as u64
    }

    /// Bytes the next record takes, counted from its start, once as much of it is in `b`
    /// as `step` reads before it judges the length (a stream reads that much before
    /// `step`; with less, at the end of the input, `step` ends as it does on a file).
    fn record_len(&self, b: &[u8]) -> Option<u64> {
        let (head, len_at, swapped) = match &self.format {
            Format::Pcap { swapped, .. } => (16, 8, *swapped),
            Format::Pcapng { swapped, .. } => (12, 4, *swapped),
        };
        if b.len() < self.at.checked_add(head)? {
            return None;
        }
        let len = u64::from(u32_at(b, self.at + len_at, swapped)?);
        Some(match self.format {
            Format::Pcap { .. } => 16 + len,
            Format::Pcapng { .. } => len.max(12),
        })
    }

    /// Reads one record.
    fn step(&mut self, b: &[u8]) -> Result<Step, FileError> {
        let at = self.at;
        let base = self.base;
        let offset = |at: usize| base + at as u64;
        match &mut self.format {
            Format::Pcap {
                swapped,
                nanos,
                linktype,
            } => {
                if at >= b.len() {
                    return Ok(Step::End);
                }
                let s = *swapped;
                let hdr = b
                    .get(at..at + 16)
                    .ok_or(FileError::TruncatedRecordHeader { at: offset(at) })?;
                let sec = u32_at(hdr, 0, s).unwrap_or(0);
                let frac = u32_at(hdr, 4, s).unwrap_or(0);
                let caplen = u32_at(hdr, 8, s).unwrap_or(0);
                let len = u32_at(hdr, 12, s).unwrap_or(0);
                let start = at + 16;
                let end = start + caplen as usize;
                if end > b.len() {
                    return Err(FileError::TruncatedPacket {
                        at: offset(at),
                        caplen,
                    });
                }
                self.at = end;
                let units = if *nanos { 1_000_000_000 } else { 1_000_000 };
                // 32-bit seconds and fraction: cannot overflow 64 bits, nor SystemTime.
                let raw = u64::from(sec) * units + u64::from(frac);
                let ts = ts_from(raw, units).ok_or(FileError::Timestamp {
                    format: "pcap",
                    raw,
                    units,
                    at: offset(at),
                })?;
                Ok(Step::Packet(Located {
                    ts,
                    at: start,
                    caplen: caplen as usize,
                    len,
                    linktype: *linktype,
                }))
            }
            Format::Pcapng { swapped, ifaces } => {
                if at + 12 > b.len() {
                    return Ok(Step::End);
                }
                let s = *swapped;
                let kind = u32_at(b, at, s).unwrap_or(0);
                let blen32 = u32_at(b, at + 4, s).unwrap_or(0);
                let blen = blen32 as usize;
                if blen < 12 || !blen.is_multiple_of(4) || at + blen > b.len() {
                    return Err(FileError::BlockLength {
                        len: blen32,
                        at: offset(at),
                    });
                }
                let block = &b[at..at + blen];
                self.at = at + blen;
                match kind {
                    // Section header: interface numbering restarts; byte order may change.
                    0x0a0d0d0a => {
                        *swapped = u32_at(block, 8, false) == Some(0x4d3c2b1a);
                        ifaces.clear();
                        Ok(Step::Other)
                    }
                    1 => {
                        let linktype = i32::from(u16_at(block, 8, s).unwrap_or(0));
                        let mut units = 1_000_000u64;
                        // Options: look for if_tsresol (code 9).
                        let mut o = 16;
                        while o + 4 <= blen - 4 {
                            let code = u16_at(block, o, s).unwrap_or(0);
                            let olen = usize::from(u16_at(block, o + 2, s).unwrap_or(0));
                            if code == 0 {
                                break;
                            }
                            if code == 9 && olen >= 1 {
                                let resol = block.get(o + 4).copied().unwrap_or(6);
                                units = tsresol_units(resol).ok_or(FileError::Resolution {
                                    resol,
                                    at: offset(at),
                                })?;
                            }
                            o += 4 + olen.div_ceil(4) * 4;
                        }
                        ifaces.push(Iface {
                            linktype,
                            units: units.max(1),
                        });
                        Ok(Step::Other)
                    }
                    // Enhanced packet block.
                    6 => {
                        let id = u32_at(block, 8, s).unwrap_or(0);
                        let hi = u64::from(u32_at(block, 12, s).unwrap_or(0));
                        let lo = u64::from(u32_at(block, 16, s).unwrap_or(0));
                        let caplen = u32_at(block, 20, s).unwrap_or(0);
                        let len = u32_at(block, 24, s).unwrap_or(0);
                        let Some(iface) = ifaces.get(id as usize) else {
                            return Err(FileError::UndeclaredInterface { id, at: offset(at) });
                        };
                        if 28 + caplen as usize > blen {
                            return Err(FileError::PacketBeyondBlock {
                                caplen,
                                at: offset(at),
                            });
                        }
                        let raw = (hi << 32) | lo;
                        let ts = ts_from(raw, iface.units).ok_or(FileError::Timestamp {
                            format: "pcapng",
                            raw,
                            units: iface.units,
                            at: offset(at),
                        })?;
                        Ok(Step::Packet(Located {
                            ts,
                            at: at + 28,
                            caplen: caplen as usize,
                            len,
                            linktype: iface.linktype,
                        }))
                    }
                    // Simple packet block: no timestamp, interface 0.
                    3 => {
                        let len = u32_at(block, 8, s).unwrap_or(0);
                        let Some(iface) = ifaces.first() else {
                            return Err(FileError::PacketBeforeInterface { at: offset(at) });
                        };
                        let caplen = (len as usize).min(blen.saturating_sub(16));
                        Ok(Step::Packet(Located {
                            ts: UNIX_EPOCH,
                            at: at + 12,
                            caplen,
                            len,
                            linktype: iface.linktype,
                        }))
                    }
                    _ => Ok(Step::Other),
                }
            }
        }
    }
}

/// Largest record a [`Stream`] holds: libpcap's own bound on a pcapng block (16 MiB);
/// a pcap record is at most the 256 KiB snap length in anything libpcap writes.
pub(crate) const MAX_STREAM_RECORD: usize = 16 << 20;

/// Bytes asked of the source per read.
const STREAM_CHUNK: usize = 256 << 10;

/// A capture read from a pipe, one record at a time: memory stays at about one record
/// (and one read) whatever the length of the capture.
pub struct Stream<R> {
    src: R,
    /// Bytes `..end` were read; the rest is room for the next read (allocated once, not
    /// cleared per read).
    buf: Vec<u8>,
    end: usize,
    /// `reader.at` indexes `buf`.
    reader: Reader,
    eof: bool,
}

impl<R: Read> Stream<R> {
    /// Reads the file header (waiting for it, as tcpdump does on a pipe).
    pub fn open(src: R) -> Result<Stream<R>, FileError> {
        let mut s = Stream {
            src,
            buf: Vec::new(),
            end: 0,
            reader: Reader {
                format: Format::Pcapng {
                    swapped: false,
                    ifaces: Vec::new(),
                },
                at: 0,
                base: 0,
            },
            eof: false,
        };
        while s.end < 24 && !s.eof {
            s.read_more(24)?;
        }
        s.reader = Reader::new(s.data())?;
        Ok(s)
    }

    /// What was read and not yet dropped.
    fn data(&self) -> &[u8] {
        &self.buf[..self.end]
    }

    /// The link type of the first interface: pcapng reads on (and keeps what it read) until
    /// its first interface description, or the end, or [`MAX_STREAM_RECORD`] bytes.
    pub fn first_linktype(&mut self) -> Result<Option<i32>, FileError> {
        loop {
            let unread = self.data().get(self.reader.at..).unwrap_or_default();
            if let Some(l) = self.reader.first_linktype(unread) {
                return Ok(Some(l));
            }
            if self.eof || self.end >= MAX_STREAM_RECORD {
                return Ok(None);
            }
            self.read_more(STREAM_CHUNK)?;
        }
    }

    /// True when the next record is read in already (or the input ended): `next_packet`
    /// will not wait for the source.
    pub fn ready(&self) -> bool {
        self.eof
            || self
                .reader
                .record_len(self.data())
                .is_some_and(|n| self.reader.at as u64 + n <= self.end as u64)
    }

    /// The next packet, None at the end; a damaged capture ends with an error, as a file.
    pub fn next_packet(&mut self) -> Result<Option<FilePacket<'_>>, FileError> {
        let p = loop {
            self.fill_record()?;
            let data = &self.buf[..self.end];
            match self.reader.step(data)? {
                Step::Packet(p) => break p,
                Step::Other => {}
                Step::End => return Ok(None),
            }
        };
        let data =
            self.data()
                .get(p.at..p.at + p.caplen)
                .ok_or_else(|| FileError::PacketBeyondBlock {
                    caplen: p.caplen as u32,
                    at: self.reader.offset(p.at),
                })?;
        Ok(Some(FilePacket {
            ts: p.ts,
            data,
            len: p.len,
            linktype: p.linktype,
        }))
    }

    /// Reads until the next record is whole in the buffer, or the input ends (then `step`
    /// reports a cut record as the file reader does).
    fn fill_record(&mut self) -> Result<(), FileError> {
        loop {
            let need = match self.reader.record_len(self.data()) {
                Some(n) if n > MAX_STREAM_RECORD as u64 => {
                    return Err(FileError::RecordTooLarge {
                        len: n,
                        at: self.reader.offset(self.reader.at),
                        max: MAX_STREAM_RECORD,
                    })
                }
                Some(n) => n as usize,
                // Not even the record's header is in: at most 16 bytes of it.
                None => 16,
            };
            if self.reader.at + need <= self.end || self.eof {
                return Ok(());
            }
            // Only now is what was read dropped: the part of the record already in moves to
            // the front, less than one record, rather than the whole buffer per packet.
            let done = self.reader.at.min(self.end);
            self.buf.copy_within(done..self.end, 0);
            self.end -= done;
            self.reader.base += done as u64;
            self.reader.at = 0;
            self.read_more(need - self.end)?;
        }
    }

    /// One read of at least `want` bytes of room (and at least a chunk: the records after
    /// this one come along when the pipe has them); sets `eof` at the end of the input.
    fn read_more(&mut self, want: usize) -> Result<(), FileError> {
        let room = want.max(STREAM_CHUNK);
        if self.buf.len() < self.end + room {
            self.buf.resize(self.end + room, 0);
        }
        loop {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(got) => {
                    self.end += got;
                    return Ok(());
                }
                // A signal (SIGINT, which ends the run in the main loop) is no reason to stop.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap(swapped: bool, packets: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let w32 = |v: u32| {
            if swapped {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w16 = |v: u16| {
            if swapped {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut f = Vec::new();
        f.extend(w32(0xa1b2c3d4));
        f.extend(w16(2));
        f.extend(w16(4));
        f.extend(w32(0));
        f.extend(w32(0));
        f.extend(w32(65535));
        f.extend(w32(1));
        for (s, us, d) in packets {
            f.extend(w32(*s));
            f.extend(w32(*us));
            f.extend(w32(d.len() as u32));
            f.extend(w32(d.len() as u32 + 1));
            f.extend_from_slice(d);
        }
        f
    }

    #[test]
    fn pcap_both_byte_orders() {
        for swapped in [false, true] {
            let f = pcap(swapped, &[(10, 5, b"abc"), (11, 0, b"")]);
            let mut r = Reader::new(&f).unwrap();
            let p = r.next(&f).unwrap().unwrap();
            assert_eq!((p.data, p.len, p.linktype), (&b"abc"[..], 4, 1));
            assert_eq!(p.ts, UNIX_EPOCH + Duration::new(10, 5000));
            assert!(r.next(&f).unwrap().is_some());
            assert!(r.next(&f).unwrap().is_none());
        }
        let f = pcap(false, &[(10, 5, b"abc")]);
        assert!(Reader::new(&f[..f.len() - 1])
            .unwrap()
            .next(&f[..f.len() - 1])
            .is_err());
    }

    /// A pcapng block of `kind` around `body` (padded to 4 bytes), little-endian.
    fn block(f: &mut Vec<u8>, kind: u32, body: &[u8]) {
        let len = 12 + body.len().div_ceil(4) * 4;
        f.extend(kind.to_le_bytes());
        f.extend((len as u32).to_le_bytes());
        f.extend_from_slice(body);
        f.extend(std::iter::repeat_n(
            0u8,
            body.len().div_ceil(4) * 4 - body.len(),
        ));
        f.extend((len as u32).to_le_bytes());
    }

    /// A section header, then one interface of `linktype` with if_tsresol `resol`.
    fn pcapng_head(linktype: u16, resol: u8) -> Vec<u8> {
        let mut f = Vec::new();
        let mut shb = 0x1a2b3c4du32.to_le_bytes().to_vec();
        shb.extend([1, 0, 0, 0]);
        shb.extend(u64::MAX.to_le_bytes());
        block(&mut f, 0x0a0d0d0a, &shb);
        let mut idb = linktype.to_le_bytes().to_vec();
        idb.extend([0, 0, 0, 0, 4, 0]);
        idb.extend([9, 0, 1, 0, resol, 0, 0, 0, 0, 0, 0, 0]);
        block(&mut f, 1, &idb);
        f
    }

    /// An enhanced packet block on interface 0.
    fn epb(f: &mut Vec<u8>, ts: u64, data: &[u8]) {
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend(((ts >> 32) as u32).to_le_bytes());
        epb.extend((ts as u32).to_le_bytes());
        epb.extend((data.len() as u32).to_le_bytes());
        epb.extend((data.len() as u32).to_le_bytes());
        epb.extend(data);
        block(f, 6, &epb);
    }

    #[test]
    fn pcapng_with_nanosecond_interface() {
        let mut f = pcapng_head(113, 9);
        epb(&mut f, 1_700_000_000_123_456_789, b"hello");
        let mut r = Reader::new(&f).unwrap();
        assert_eq!(r.first_linktype(&f), Some(113));
        let p = r.next(&f).unwrap().unwrap();
        assert_eq!((p.data, p.linktype), (&b"hello"[..], 113));
        assert_eq!(p.ts, UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789));
        assert!(r.next(&f).unwrap().is_none());
    }

    /// if_tsresol 0 counts whole seconds: a count near 2^64 is a time no clock holds. It
    /// used to panic the reading thread (`SystemTime + Duration` overflowing); it is damage,
    /// reported with the value, after the packet before it.
    #[test]
    fn a_timestamp_no_clock_holds_is_damage_after_the_packets_before_it() {
        let mut f = pcapng_head(1, 0);
        epb(&mut f, 1_700_000_000, b"fine");
        let at = f.len();
        epb(&mut f, u64::MAX - 5, b"hostile");
        let mut r = Reader::new(&f).unwrap();
        let p = r.next(&f).unwrap().unwrap();
        assert_eq!(p.ts, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let e = r.next(&f).unwrap_err();
        assert!(
            matches!(e, FileError::Timestamp { raw, units: 1, at: a, .. }
                if raw == u64::MAX - 5 && a == at as u64),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "pcapng: packet at offset {at}: timestamp {} (units of 1/1 s) is out of range",
                u64::MAX - 5
            )
        );
        // And the largest count of nanoseconds is a time like any other (year 2554).
        let mut f = pcapng_head(1, 9);
        epb(&mut f, u64::MAX, b"late");
        let mut r = Reader::new(&f).unwrap();
        assert!(r.next(&f).unwrap().is_some());
    }

    #[test]
    fn an_if_tsresol_beyond_64_bits_is_damage() {
        for (resol, ok) in [
            (19u8, true),
            (20, false),
            (0x80 | 63, true),
            (0x80 | 64, false),
        ] {
            let mut f = pcapng_head(1, resol);
            epb(&mut f, 1, b"x");
            let got = Reader::new(&f).unwrap().next(&f).map(|p| p.is_some());
            match got {
                Ok(true) => assert!(ok, "if_tsresol {resol:#x} accepted"),
                Err(FileError::Resolution { resol: r, at: 28 }) => {
                    assert!(!ok && r == resol, "if_tsresol {resol:#x}")
                }
                other => panic!("if_tsresol {resol:#x}: {other:?}"),
            }
        }
    }

    /// A source that hands over 1 to 7 bytes per read, as a pipe may.
    struct Dribble<'a> {
        b: &'a [u8],
        reads: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            let n = (1 + self.reads % 7).min(out.len()).min(self.b.len());
            out[..n].copy_from_slice(&self.b[..n]);
            self.b = &self.b[n..];
            Ok(n)
        }
    }

    /// Packets read (timestamp, bytes, length on the wire, link type), and how the reading
    /// ended.
    type Got = (Vec<(SystemTime, Vec<u8>, u32, i32)>, Result<(), String>);

    /// Every packet of `f` as the map reads it, and how the reading ended.
    fn mapped_packets(f: &[u8]) -> Got {
        let mut r = match Reader::new(f) {
            Ok(r) => r,
            Err(e) => return (Vec::new(), Err(e.to_string())),
        };
        let mut out = Vec::new();
        loop {
            match r.next(f) {
                Ok(Some(p)) => out.push((p.ts, p.data.to_vec(), p.len, p.linktype)),
                Ok(None) => return (out, Ok(())),
                Err(e) => return (out, Err(e.to_string())),
            }
        }
    }

    fn streamed_packets<R: Read>(src: R) -> Got {
        let mut s = match Stream::open(src) {
            Ok(s) => s,
            Err(e) => return (Vec::new(), Err(e.to_string())),
        };
        let mut out = Vec::new();
        loop {
            match s.next_packet() {
                Ok(Some(p)) => out.push((p.ts, p.data.to_vec(), p.len, p.linktype)),
                Ok(None) => return (out, Ok(())),
                Err(e) => return (out, Err(e.to_string())),
            }
        }
    }

    #[test]
    fn a_stream_reads_what_the_map_reads_whatever_the_read_sizes() {
        let payloads: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i) * 37]).collect();
        let packets: Vec<(u32, u32, &[u8])> = payloads
            .iter()
            .enumerate()
            .map(|(i, d)| (1_700_000_000 + i as u32, 7, &d[..]))
            .collect();
        let mut ng = pcapng_head(1, 6);
        for (i, d) in payloads.iter().enumerate() {
            epb(&mut ng, 1_700_000_000_000_000 + i as u64, d);
        }
        let mut files = vec![pcap(false, &packets), pcap(true, &packets), ng.clone()];
        // Damaged: cut inside the last record, and a block length that cannot be.
        let cut = files[0].len() - 3;
        files.push(files[0][..cut].to_vec());
        let mut bad = ng.clone();
        bad.extend(6u32.to_le_bytes());
        bad.extend(13u32.to_le_bytes());
        bad.extend([0; 8]);
        files.push(bad);
        // A tail too short for a block, whose length field claims 4 GiB: the end, for the
        // map and the stream alike (the stream once refused it as too large; found by
        // fuzz/capture_file).
        let mut tail = ng.clone();
        tail.extend(6u32.to_le_bytes());
        tail.extend(u32::MAX.to_le_bytes());
        files.push(tail);
        for f in &files {
            let mapped = mapped_packets(f);
            assert!(mapped.0.len() >= 49);
            assert_eq!(streamed_packets(Dribble { b: f, reads: 0 }), mapped);
            assert_eq!(streamed_packets(f.as_slice()), mapped);
        }
        // Nothing waits once the whole input is in; a dribbling pipe makes `next` wait.
        let mut s = Stream::open(files[0].as_slice()).unwrap();
        s.next_packet().unwrap().unwrap();
        assert!(s.ready());
        let mut s = Stream::open(Dribble {
            b: &files[0],
            reads: 0,
        })
        .unwrap();
        s.next_packet().unwrap().unwrap();
        assert!(!s.ready());
    }

    #[test]
    fn a_stream_refuses_a_record_beyond_its_bound() {
        let mut f = pcap(false, &[(1, 0, b"ok")]);
        let at = f.len();
        for v in [2u32, 0, u32::MAX, u32::MAX] {
            f.extend(v.to_le_bytes());
        }
        let (got, end) = streamed_packets(f.as_slice());
        assert_eq!(got.len(), 1);
        assert_eq!(
            end.unwrap_err(),
            format!(
                "record of {} bytes at offset {at}: more than the {MAX_STREAM_RECORD} bytes a record may have",
                16 + u64::from(u32::MAX)
            )
        );
        // The map knows the file's end, and says the packet is cut there.
        assert!(mapped_packets(&f)
            .1
            .unwrap_err()
            .contains("truncated packet"));
    }
}
