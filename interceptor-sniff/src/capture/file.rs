//! Capture files read in place: pcap (micro- and nanosecond, either byte order) and
//! pcapng (section, interface and enhanced/simple packet blocks), from a memory map.
//!
//! libpcap reads files through stdio, one packet copied at a time; mapping the file and
//! borrowing each packet from the map removes a copy and most system calls from an
//! offline run, which is where the sniffer's speed is measured. Filters still come from
//! libpcap (compiled once per link type, run in user space).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// A read-only memory map of a whole file.
pub struct Mapped {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and owned; nothing mutates it, so it can be moved to
// and read from any thread.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

/// Largest file mapped with `MAP_POPULATE`.
const POPULATE_MAX: usize = 256 << 20;

impl Mapped {
    pub fn open(path: &Path) -> Result<Mapped> {
        let f = File::open(path).with_context(|| format!("-I {}", path.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("-I {}", path.display()))?
            .len() as usize;
        if len == 0 {
            bail!("-I {}: empty file", path.display());
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
            bail!(
                "-I {}: mmap: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
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
    at: usize,
}

fn u16_at(b: &[u8], at: usize, swapped: bool) -> Option<u16> {
    let v = u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?);
    Some(if swapped { v.swap_bytes() } else { v })
}

fn u32_at(b: &[u8], at: usize, swapped: bool) -> Option<u32> {
    let v = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?);
    Some(if swapped { v.swap_bytes() } else { v })
}

fn ts_from(units_total: u64, units: u64) -> SystemTime {
    let secs = units_total / units;
    let rem = units_total % units;
    let nanos = (u128::from(rem) * 1_000_000_000 / u128::from(units)) as u32;
    UNIX_EPOCH + Duration::new(secs, nanos)
}

impl Reader {
    pub fn new(b: &[u8]) -> Result<Reader> {
        let magic = u32_at(b, 0, false).context("too short for a capture file")?;
        let format = match magic {
            0xa1b2c3d4 | 0xa1b23c4d | 0xd4c3b2a1 | 0x4d3cb2a1 => {
                let swapped = matches!(magic, 0xd4c3b2a1 | 0x4d3cb2a1);
                let nanos = matches!(magic, 0xa1b23c4d | 0x4d3cb2a1);
                let linktype =
                    (u32_at(b, 20, swapped).context("truncated pcap header")? & 0x0fff_ffff) as i32;
                return Ok(Reader {
                    format: Format::Pcap {
                        swapped,
                        nanos,
                        linktype,
                    },
                    at: 24,
                });
            }
            0x0a0d0d0a => {
                let bom = u32_at(b, 8, false).context("truncated pcapng section header")?;
                let swapped = match bom {
                    0x1a2b3c4d => false,
                    0x4d3c2b1a => true,
                    _ => bail!("pcapng: bad byte-order magic {bom:#x}"),
                };
                Format::Pcapng {
                    swapped,
                    ifaces: Vec::new(),
                }
            }
            _ => bail!("not a pcap or pcapng file (magic {magic:#010x})"),
        };
        Ok(Reader { format, at: 0 })
    }

    /// The link type of the first interface (pcapng: once its description was read).
    pub fn first_linktype(&self, b: &[u8]) -> Option<i32> {
        match &self.format {
            Format::Pcap { linktype, .. } => Some(*linktype),
            Format::Pcapng { swapped, .. } => {
                // Find the first interface description block.
                let mut at = 0;
                while let (Some(kind), Some(len)) =
                    (u32_at(b, at, *swapped), u32_at(b, at + 4, *swapped))
                {
                    if kind == 1 {
                        return u16_at(b, at + 8, *swapped).map(i32::from);
                    }
                    if len < 12 {
                        return None;
                    }
                    at += len as usize;
                }
                None
            }
        }
    }

    /// The next packet, None at the end; a damaged file ends with an error.
    pub fn next<'a>(&mut self, b: &'a [u8]) -> Result<Option<FilePacket<'a>>> {
        match &mut self.format {
            Format::Pcap {
                swapped,
                nanos,
                linktype,
            } => {
                let at = self.at;
                if at >= b.len() {
                    return Ok(None);
                }
                let hdr = b
                    .get(at..at + 16)
                    .context("pcap: truncated record header at the end")?;
                let sec = u32_at(hdr, 0, *swapped).unwrap_or(0);
                let frac = u32_at(hdr, 4, *swapped).unwrap_or(0);
                let caplen = u32_at(hdr, 8, *swapped).unwrap_or(0) as usize;
                let len = u32_at(hdr, 12, *swapped).unwrap_or(0);
                let data = b
                    .get(at + 16..at + 16 + caplen)
                    .context("pcap: truncated packet at the end")?;
                self.at = at + 16 + caplen;
                let units = if *nanos { 1_000_000_000 } else { 1_000_000 };
                let ts = ts_from(u64::from(sec) * units + u64::from(frac), units);
                Ok(Some(FilePacket {
                    ts,
                    data,
                    len,
                    linktype: *linktype,
                }))
            }
            Format::Pcapng { swapped, ifaces } => loop {
                let at = self.at;
                if at + 12 > b.len() {
                    return Ok(None);
                }
                let s = *swapped;
                let kind = u32_at(b, at, s).unwrap_or(0);
                let blen = u32_at(b, at + 4, s).unwrap_or(0) as usize;
                if blen < 12 || !blen.is_multiple_of(4) || at + blen > b.len() {
                    bail!("pcapng: bad block length {blen} at offset {at}");
                }
                let block = &b[at..at + blen];
                self.at = at + blen;
                match kind {
                    // Section header: interface numbering restarts; byte order may change.
                    0x0a0d0d0a => {
                        *swapped = u32_at(block, 8, false) == Some(0x4d3c2b1a);
                        ifaces.clear();
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
                                let r = block[o + 4];
                                units = if r & 0x80 != 0 {
                                    1u64.checked_shl(u32::from(r & 0x7f)).unwrap_or(1_000_000)
                                } else {
                                    10u64.checked_pow(u32::from(r)).unwrap_or(1_000_000)
                                };
                            }
                            o += 4 + olen.div_ceil(4) * 4;
                        }
                        ifaces.push(Iface {
                            linktype,
                            units: units.max(1),
                        });
                    }
                    // Enhanced packet block.
                    6 => {
                        let ifid = u32_at(block, 8, s).unwrap_or(0) as usize;
                        let hi = u64::from(u32_at(block, 12, s).unwrap_or(0));
                        let lo = u64::from(u32_at(block, 16, s).unwrap_or(0));
                        let caplen = u32_at(block, 20, s).unwrap_or(0) as usize;
                        let len = u32_at(block, 24, s).unwrap_or(0);
                        let Some(iface) = ifaces.get(ifid) else {
                            bail!("pcapng: packet for undeclared interface {ifid}")
                        };
                        let data = block
                            .get(28..28 + caplen)
                            .context("pcapng: packet longer than its block")?;
                        let ts = ts_from((hi << 32) | lo, iface.units);
                        return Ok(Some(FilePacket {
                            ts,
                            data,
                            len,
                            linktype: iface.linktype,
                        }));
                    }
                    // Simple packet block: no timestamp, interface 0.
                    3 => {
                        let len = u32_at(block, 8, s).unwrap_or(0);
                        let Some(iface) = ifaces.first() else {
                            bail!("pcapng: packet before any interface")
                        };
                        let caplen = (len as usize).min(blen.saturating_sub(16));
                        let data = &block[12..12 + caplen];
                        return Ok(Some(FilePacket {
                            ts: UNIX_EPOCH,
                            data,
                            len,
                            linktype: iface.linktype,
                        }));
                    }
                    _ => {}
                }
            },
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

    #[test]
    fn pcapng_with_nanosecond_interface() {
        let mut f = Vec::new();
        let block = |f: &mut Vec<u8>, kind: u32, body: &[u8]| {
            let len = 12 + body.len().div_ceil(4) * 4;
            f.extend(kind.to_le_bytes());
            f.extend((len as u32).to_le_bytes());
            f.extend_from_slice(body);
            f.extend(std::iter::repeat_n(
                0u8,
                body.len().div_ceil(4) * 4 - body.len(),
            ));
            f.extend((len as u32).to_le_bytes());
        };
        let mut shb = 0x1a2b3c4du32.to_le_bytes().to_vec();
        shb.extend([1, 0, 0, 0]);
        shb.extend(u64::MAX.to_le_bytes());
        block(&mut f, 0x0a0d0d0a, &shb);
        let mut idb = vec![113, 0, 0, 0, 0, 0, 4, 0];
        idb.extend([9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
        block(&mut f, 1, &idb);
        let ts: u64 = 1_700_000_000_123_456_789;
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend(((ts >> 32) as u32).to_le_bytes());
        epb.extend((ts as u32).to_le_bytes());
        epb.extend(5u32.to_le_bytes());
        epb.extend(5u32.to_le_bytes());
        epb.extend(b"hello");
        block(&mut f, 6, &epb);
        let mut r = Reader::new(&f).unwrap();
        assert_eq!(r.first_linktype(&f), Some(113));
        let p = r.next(&f).unwrap().unwrap();
        assert_eq!((p.data, p.linktype), (&b"hello"[..], 113));
        assert_eq!(p.ts, UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789));
        assert!(r.next(&f).unwrap().is_none());
    }
}
