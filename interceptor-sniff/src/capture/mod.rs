//! Packet sources: live interfaces (libpcap) and capture files (read in place).
//!
//! Live capture goes through libpcap (the `pcap` crate) rather than a hand-written
//! AF_PACKET socket: on Linux it already opens a TPACKET_V3 memory-mapped ring, compiles
//! tcpdump filter syntax to classic BPF and attaches it in the kernel, reports kernel drops
//! and handles `any`; redoing that would be a second, less tested copy of the same. Files
//! are mapped and walked by `file` (pcap and pcapng), with the same libpcap filters run in
//! user space, on a thread of their own that reads ahead. A pipe (`-I -`, a FIFO) cannot be
//! mapped: the same thread reads it record by record and hands over copies of the packets.

pub mod file;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, RecvError, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap::{Active, Capture};

use crate::wire::packet::LinkType;

/// Why a packet source cannot be opened or read on. Each names the value it is about;
/// [`Error::subject`] says which input that was, so the command line can name its flag.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The capture file cannot be opened.
    #[error(transparent)]
    Open(#[from] file::OpenError),
    /// The capture file's start cannot be read (not a capture, an unsupported link type).
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    /// The capture file is damaged part way; what came before was read.
    #[error("{0}")]
    Damaged(String),
    /// The packet filter does not compile.
    #[error("{filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    /// The interface cannot be captured on.
    #[error("{device}: {reason}")]
    Device { device: String, reason: String },
    /// The pcap to write packets to cannot be written.
    #[error("{path}: {reason}")]
    Savefile { path: String, reason: String },
    /// Reading packets failed for another reason.
    #[error("{0}")]
    Read(String),
}

/// The input an [`Error`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// The capture file.
    File,
    /// The packet filter.
    Filter,
    /// The interface.
    Device,
    /// The pcap written.
    Savefile,
    /// None in particular (the message says what failed).
    Other,
}

impl Error {
    pub fn subject(&self) -> Subject {
        match self {
            Error::Open(_) | Error::Unreadable { .. } => Subject::File,
            Error::Filter { .. } => Subject::Filter,
            Error::Device { .. } => Subject::Device,
            Error::Savefile { .. } => Subject::Savefile,
            Error::Damaged(_) | Error::Read(_) => Subject::Other,
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

/// Live capture settings.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    pub device: String,
    pub snaplen: i32,
    pub promisc: bool,
    /// Kernel ring size in bytes.
    pub buffer: i32,
    /// How long a read waits before giving control back (to check for signals).
    pub poll: Duration,
}

enum Handle {
    /// Non-blocking: `next` polls the descriptor itself, so a signal or a vanished
    /// interface is noticed within one poll interval even when no packet arrives.
    Live(Capture<Active>, Duration),
    File(FileSource),
}

/// Offline: a thread walks the mapped file ahead of the reader and runs the filter, and
/// hands over the packets that pass as places in the map, a batch at a time. Filtering is
/// libpcap's BPF interpreter, a fair share of an offline run; apart, it overlaps with
/// reassembly and HTTP parsing.
struct FileSource {
    /// None for a pipe: each batch then brings its packets' bytes (`owned`).
    map: Option<Arc<file::Mapped>>,
    owned: Vec<u8>,
    ahead: Receiver<Ahead>,
    batch: std::vec::IntoIter<Kept>,
    /// The thread, joined when it stops sending: a panic there is an error, not the end.
    thread: Option<std::thread::JoinHandle<()>>,
    /// How long a pipe may stay silent before `read` says so (`Next::Idle`), so that what
    /// was found is written while the writer (tcpdump -U -w -) pauses.
    poll: Option<Duration>,
}

/// What the read-ahead thread sends: packets that passed (with their bytes, from a pipe;
/// empty from a map), or why the file cannot be read on.
enum Ahead {
    Kept(Vec<Kept>, Vec<u8>),
    Failed(Error),
}

/// A packet that passed the filter: where it lies in the map (or its batch's bytes), and
/// its header.
#[derive(Clone, Copy)]
struct Kept {
    ts: SystemTime,
    at: usize,
    caplen: usize,
    len: u32,
    linktype: i32,
}

/// Packets per batch from the read-ahead thread.
const AHEAD_BATCH: usize = 1024;
/// Batches the read-ahead thread may be ahead by.
const AHEAD_BATCHES: usize = 8;
/// Bytes per batch read from a pipe: with `AHEAD_BATCHES` this bounds the memory a pipe
/// costs, whatever its packets' sizes.
const STREAM_BATCH_BYTES: usize = 1 << 20;

/// The read-ahead thread: reads and filters until the end, a damaged record, or the
/// reader going away.
fn read_ahead(
    map: Arc<file::Mapped>,
    mut reader: file::Reader,
    filter: String,
    to: SyncSender<Ahead>,
) {
    let bytes = map.bytes();
    let base = bytes.as_ptr() as usize;
    // Compiled filters per link type (a pcapng file may mix them).
    let mut programs = Vec::new();
    let mut batch = Vec::with_capacity(AHEAD_BATCH);
    let failed = loop {
        let p = match reader.next(bytes) {
            Ok(Some(p)) => p,
            Ok(None) => break None,
            Err(e) => break Some(Error::Damaged(e.to_string())),
        };
        let keep = match passes(&mut programs, &filter, p.linktype, p.data) {
            Ok(keep) => keep,
            Err(e) => break Some(e),
        };
        if keep {
            // Touch every cache line of the packet: measured faster, the parser then waits
            // less on memory for it.
            let mut touched = 0u8;
            for line in p.data.chunks(64) {
                touched ^= line[0];
            }
            std::hint::black_box(touched);
            batch.push(Kept {
                ts: p.ts,
                at: p.data.as_ptr() as usize - base,
                caplen: p.data.len(),
                len: p.len,
                linktype: p.linktype,
            });
            if batch.len() == AHEAD_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(AHEAD_BATCH));
                if to.send(Ahead::Kept(full, Vec::new())).is_err() {
                    return;
                }
            }
        }
    };
    if !batch.is_empty() && to.send(Ahead::Kept(batch, Vec::new())).is_err() {
        return;
    }
    if let Some(why) = failed {
        let _ = to.send(Ahead::Failed(why));
    }
}

/// The read-ahead thread of a pipe: reads and filters as `read_ahead`, copies the packets
/// that pass into the batch, and hands the batch over before it would wait for the pipe,
/// so a slow writer's packets are reported as they come.
fn read_ahead_stream<R: Read>(mut stream: file::Stream<R>, filter: String, to: SyncSender<Ahead>) {
    let mut programs = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = Vec::new();
    let failed = loop {
        if !batch.is_empty() && (!stream.ready() || bytes.len() >= STREAM_BATCH_BYTES) {
            let full = (std::mem::take(&mut batch), std::mem::take(&mut bytes));
            if to.send(Ahead::Kept(full.0, full.1)).is_err() {
                return;
            }
        }
        let p = match stream.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break None,
            Err(e) => break Some(Error::Damaged(e.to_string())),
        };
        let keep = match passes(&mut programs, &filter, p.linktype, p.data) {
            Ok(keep) => keep,
            Err(e) => break Some(e),
        };
        if keep {
            batch.push(Kept {
                ts: p.ts,
                at: bytes.len(),
                caplen: p.data.len(),
                len: p.len,
                linktype: p.linktype,
            });
            bytes.extend_from_slice(p.data);
            if batch.len() == AHEAD_BATCH {
                let full = (std::mem::take(&mut batch), std::mem::take(&mut bytes));
                if to.send(Ahead::Kept(full.0, full.1)).is_err() {
                    return;
                }
            }
        }
    };
    if !batch.is_empty() && to.send(Ahead::Kept(batch, bytes)).is_err() {
        return;
    }
    if let Some(why) = failed {
        let _ = to.send(Ahead::Failed(why));
    }
}

pub struct Source {
    handle: Handle,
    link: LinkType,
    device: Option<String>,
}

/// The compiled filter for `linktype`, compiled on first use.
fn program<'p>(
    programs: &'p mut Vec<(i32, Option<pcap::BpfProgram>)>,
    filter: &str,
    linktype: i32,
) -> Result<&'p Option<pcap::BpfProgram>> {
    // Nearly always one link type per file: a linear search beats hashing.
    let at = match programs.iter().position(|(l, _)| *l == linktype) {
        Some(at) => at,
        None => {
            let prog = if filter.is_empty() {
                None
            } else {
                let bad = |e: pcap::Error| Error::Filter {
                    filter: filter.to_string(),
                    reason: e.to_string(),
                };
                let dead = Capture::dead(pcap::Linktype(linktype)).map_err(bad)?;
                Some(dead.compile(filter, true).map_err(bad)?)
            };
            programs.push((linktype, prog));
            programs.len() - 1
        }
    };
    Ok(&programs[at].1)
}

/// Whether a packet of `linktype` passes `filter` (compiled on first use per link type).
fn passes(
    programs: &mut Vec<(i32, Option<pcap::BpfProgram>)>,
    filter: &str,
    linktype: i32,
    data: &[u8],
) -> Result<bool> {
    Ok(match program(programs, filter, linktype)? {
        Some(prog) => prog.filter(data),
        None => true,
    })
}

/// One captured packet.
pub struct Frame<'a> {
    pub ts: SystemTime,
    pub data: &'a [u8],
    /// Length on the wire (the capture may hold less).
    pub len: u32,
    /// None for a link type the decoder does not know (pcapng may mix them).
    pub link: Option<LinkType>,
}

impl Frame<'_> {
    /// Appends the frame to a pcap file (`-O`).
    pub(crate) fn write_to(&self, sf: &mut pcap::Savefile) {
        let d = self.ts.duration_since(UNIX_EPOCH).unwrap_or_default();
        let header = pcap::PacketHeader {
            ts: libc::timeval {
                tv_sec: d.as_secs() as libc::time_t,
                tv_usec: d.subsec_micros() as libc::suseconds_t,
            },
            caplen: self.data.len() as u32,
            len: self.len,
        };
        sf.write(&pcap::Packet::new(&header, self.data));
    }
}

pub enum Next<'a> {
    Frame(Frame<'a>),
    /// Nothing arrived during the poll interval (live only).
    Idle,
    /// End of the file.
    End,
    /// The interface went away (the pod was deleted) or down.
    Gone(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub received: u64,
    pub dropped: u64,
    pub if_dropped: u64,
}

/// The decoder's link type, or why there is none.
fn link_of(dl: pcap::Linktype) -> std::result::Result<LinkType, String> {
    LinkType::from_pcap(dl.0).ok_or_else(|| {
        format!(
            "unsupported data link type {} ({}): sniff decodes Ethernet, Linux cooked and raw IP",
            dl.0,
            dl.get_name().unwrap_or_default()
        )
    })
}

pub fn interface_exists(dev: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(dev) else {
        return false;
    };
    // SAFETY: name is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

impl Source {
    /// A capture file (`-I FILE`), or standard input for `-`, as tcpdump's `-r -`. A
    /// regular file is mapped; a pipe, FIFO or terminal is read as a stream.
    pub(crate) fn open_file(path: &Path, filter: &str) -> Result<Source> {
        let name = path.display().to_string();
        let f = if path == Path::new("-") {
            // A descriptor of our own for the read-ahead thread; stdin stays usable.
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
        } else {
            File::open(path)
        }
        .map_err(|err| file::OpenError::Open {
            path: name.clone(),
            err,
        })?;
        let meta = f.metadata().map_err(|err| file::OpenError::Open {
            path: name.clone(),
            err,
        })?;
        if meta.is_dir() {
            return Err(file::OpenError::Directory(name).into());
        }
        if !meta.is_file() {
            return Source::open_stream(f, &name, filter);
        }
        let map = file::Mapped::map(&f, meta.len(), &name)?;
        drop(f);
        let unreadable = |reason: String| Error::Unreadable {
            path: name.clone(),
            reason,
        };
        let reader = file::Reader::new(map.bytes()).map_err(|e| unreadable(e.to_string()))?;
        let first = reader.first_linktype(map.bytes()).unwrap_or(1);
        let link = link_of(pcap::Linktype(first)).map_err(unreadable)?;
        // Compiled now so a bad FILTER is reported before anything is read; the
        // read-ahead thread compiles its own (a program cannot be sent to it).
        program(&mut Vec::new(), filter, first)?;
        let map = Arc::new(map);
        let (to, ahead) = sync_channel(AHEAD_BATCHES);
        let (m, f) = (map.clone(), filter.to_string());
        let thread = std::thread::Builder::new()
            .name("sniff-read".into())
            .spawn(move || read_ahead(m, reader, f, to))
            .map_err(|e| Error::Read(format!("starting the read-ahead thread: {e}")))?;
        let fs = FileSource {
            map: Some(map),
            owned: Vec::new(),
            ahead,
            batch: Vec::new().into_iter(),
            thread: Some(thread),
            poll: None,
        };
        Ok(Source {
            handle: Handle::File(fs),
            link,
            device: None,
        })
    }

    /// A capture read as it comes (`name` for errors): waits for its file header (and a
    /// pcapng's first interface) here, then reads ahead on a thread.
    pub(crate) fn open_stream<R: Read + Send + 'static>(
        src: R,
        name: &str,
        filter: &str,
    ) -> Result<Source> {
        let unreadable = |reason: String| Error::Unreadable {
            path: name.to_string(),
            reason,
        };
        let mut stream = file::Stream::open(src).map_err(|e| unreadable(e.to_string()))?;
        let first = stream
            .first_linktype()
            .map_err(|e| unreadable(e.to_string()))?
            .unwrap_or(1);
        let link = link_of(pcap::Linktype(first)).map_err(unreadable)?;
        program(&mut Vec::new(), filter, first)?;
        let (to, ahead) = sync_channel(AHEAD_BATCHES);
        let f = filter.to_string();
        let thread = std::thread::Builder::new()
            .name("sniff-read".into())
            .spawn(move || read_ahead_stream(stream, f, to))
            .map_err(|e| Error::Read(format!("starting the read-ahead thread: {e}")))?;
        let fs = FileSource {
            map: None,
            owned: Vec::new(),
            ahead,
            batch: Vec::new().into_iter(),
            thread: Some(thread),
            poll: Some(Duration::from_millis(100)),
        };
        Ok(Source {
            handle: Handle::File(fs),
            link,
            device: None,
        })
    }

    pub fn open_live(cfg: &LiveConfig, filter: &str) -> Result<Source> {
        let device = |reason: String| Error::Device {
            device: cfg.device.clone(),
            reason,
        };
        if cfg.device != "any" && !interface_exists(&cfg.device) {
            return Err(device("no such interface".into()));
        }
        let cap = Capture::from_device(cfg.device.as_str())
            .map_err(|e| device(e.to_string()))?
            .snaplen(cfg.snaplen)
            .promisc(cfg.promisc)
            .buffer_size(cfg.buffer)
            .timeout(cfg.poll.as_millis().clamp(1, i32::MAX as u128) as i32);
        let mut cap = cap.open().map_err(|e| {
            let msg = e.to_string();
            if msg.contains("ermission") || msg.contains("not permitted") {
                device(format!("{msg} (live capture needs CAP_NET_RAW)"))
            } else {
                device(msg)
            }
        })?;
        // On `any`, prefer the v2 cooked header: it names the interface of each packet.
        if cfg.device == "any"
            && cap
                .list_datalinks()
                .map(|l| l.contains(&pcap::Linktype(276)))
                .unwrap_or(false)
        {
            let _ = cap.set_datalink(pcap::Linktype(276));
        }
        if !filter.is_empty() {
            cap.filter(filter, true).map_err(|e| Error::Filter {
                filter: filter.to_string(),
                reason: e.to_string(),
            })?;
        }
        let link = link_of(cap.get_datalink()).map_err(device)?;
        let cap = cap.setnonblock().map_err(|e| device(e.to_string()))?;
        Ok(Source {
            handle: Handle::Live(cap, cfg.poll),
            link,
            device: Some(cfg.device.clone()),
        })
    }

    pub fn link(&self) -> LinkType {
        self.link
    }

    pub fn is_live(&self) -> bool {
        matches!(self.handle, Handle::Live(..))
    }

    /// A capture read from a pipe: it may pause (`Next::Idle`) and go on.
    pub(crate) fn is_stream(&self) -> bool {
        matches!(&self.handle, Handle::File(fs) if fs.map.is_none())
    }

    /// The next packet, or why there is none now (idle, the end, the interface gone).
    pub fn read(&mut self) -> Result<Next<'_>> {
        let fs = match &mut self.handle {
            Handle::File(fs) => fs,
            Handle::Live(c, poll) => {
                let poll_ms = poll.as_millis().clamp(1, 10_000) as libc::c_int;
                let mut waited = false;
                loop {
                    let got = c
                        .next_packet()
                        .map(|p| (*p.header, p.data.as_ptr(), p.data.len()));
                    let err = match got {
                        Ok((h, ptr, n)) => {
                            // Checked like a file's: the kernel's clock is trusted no
                            // further than a file's.
                            let ts = UNIX_EPOCH
                                .checked_add(Duration::new(
                                    h.ts.tv_sec.max(0) as u64,
                                    (h.ts.tv_usec.clamp(0, 999_999) as u32) * 1000,
                                ))
                                .unwrap_or(UNIX_EPOCH);
                            // SAFETY: libpcap keeps the packet valid until the next read on
                            // this handle, and the returned frame borrows `self` mutably, so
                            // no read can happen while it lives. (Taken apart and rebuilt
                            // only because the borrow checker cannot see a loop that
                            // returns a borrow on one path and retries on another.)
                            let data = unsafe { std::slice::from_raw_parts(ptr, n) };
                            return Ok(Next::Frame(Frame {
                                ts,
                                data,
                                len: h.len,
                                link: Some(self.link),
                            }));
                        }
                        // Non-blocking and nothing ready.
                        Err(pcap::Error::TimeoutExpired) => None,
                        Err(pcap::Error::NoMorePackets) => return Ok(Next::End),
                        Err(e) => Some(e.to_string()),
                    };
                    let dev = self.device.as_deref().unwrap_or("any");
                    let gone = dev != "any" && !interface_exists(dev);
                    if let Some(msg) = err {
                        if gone || msg.contains("disappeared") || msg.contains("went down") {
                            return Ok(Next::Gone(format!("interface {dev} is gone ({msg})")));
                        }
                        return Err(Error::Read(format!("reading packets: {msg}")));
                    }
                    if gone {
                        return Ok(Next::Gone(format!("interface {dev} is gone")));
                    }
                    if waited {
                        return Ok(Next::Idle);
                    }
                    let mut pfd = libc::pollfd {
                        fd: c.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; EINTR (a signal) just ends the wait.
                    let n = unsafe { libc::poll(&mut pfd, 1, poll_ms) };
                    if n <= 0 {
                        return Ok(Next::Idle);
                    }
                    waited = true;
                }
            }
        };
        let p = loop {
            if let Some(p) = fs.batch.next() {
                break p;
            }
            let got = match fs.poll {
                Some(poll) => match fs.ahead.recv_timeout(poll) {
                    Err(RecvTimeoutError::Timeout) => return Ok(Next::Idle),
                    got => got.map_err(|_| RecvError),
                },
                None => fs.ahead.recv(),
            };
            match got {
                Ok(Ahead::Kept(b, bytes)) => {
                    fs.batch = b.into_iter();
                    fs.owned = bytes;
                }
                Ok(Ahead::Failed(why)) => return Err(why),
                // The thread is done: the end of the file, unless it failed.
                Err(_) => match fs.thread.take().map(|t| t.join()) {
                    Some(Err(_)) => return Err(Error::Read("the read-ahead thread failed".into())),
                    _ => return Ok(Next::End),
                },
            }
        };
        let bytes = match &fs.map {
            Some(map) => map.bytes(),
            None => &fs.owned,
        };
        let data = bytes
            .get(p.at..p.at + p.caplen)
            .ok_or_else(|| Error::Read("read-ahead: packet outside the capture file".into()))?;
        Ok(Next::Frame(Frame {
            ts: p.ts,
            data,
            len: p.len,
            link: LinkType::from_pcap(p.linktype),
        }))
    }

    /// The kernel's counters for a live capture.
    pub fn kernel(&mut self) -> Option<KernelCounters> {
        match &mut self.handle {
            Handle::Live(c, _) => c.stats().ok().map(|s| KernelCounters {
                received: u64::from(s.received),
                dropped: u64::from(s.dropped),
                if_dropped: u64::from(s.if_dropped),
            }),
            Handle::File(_) => None,
        }
    }

    /// A pcap writer with this source's link type (`-O`).
    pub fn savefile(&self, path: &Path) -> Result<pcap::Savefile> {
        let bad = |e: pcap::Error| Error::Savefile {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        match &self.handle {
            Handle::Live(c, _) => c.savefile(path),
            Handle::File(_) => Capture::dead(pcap::Linktype(self.link.to_pcap()))
                .map_err(bad)?
                .savefile(path),
        }
        .map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::build::ethernet_tcp;
    use crate::wire::packet::flags::ACK;
    use crate::wire::pcap;
    use std::net::SocketAddr;

    /// A classic pcap of `n` packets to port 80 and 81 in turn, each carrying its index.
    fn capture(n: u32) -> Vec<u8> {
        let mut w = pcap::Writer::new(Vec::new(), pcap::LINKTYPE_ETHERNET, 65535).unwrap();
        for i in 0..n {
            let client = SocketAddr::from(([10, 0, 0, 1], 40000));
            let server = SocketAddr::from(([10, 0, 0, 2], 80 + (i % 2) as u16));
            let f = ethernet_tcp(client, server, i, 0, ACK, &i.to_be_bytes());
            w.packet(u64::from(1_700_000_000 + i) * 1_000_000, &f)
                .unwrap();
        }
        w.into_inner()
    }

    /// Reads `file` through a `Source` with `filter`: the index each packet carries, then
    /// how the reading ended.
    fn read_all(file: &[u8], filter: &str) -> (Vec<u32>, Result<()>) {
        let dir = std::env::temp_dir().join(format!(
            "interceptor-ahead-{}-{}",
            std::process::id(),
            file.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.pcap");
        std::fs::write(&path, file).unwrap();
        let mut src = Source::open_file(&path, filter).unwrap();
        assert!(!src.is_stream());
        let (seen, end, idle) = drain(&mut src);
        assert_eq!(idle, 0, "a file is never idle");
        std::fs::remove_dir_all(&dir).unwrap();
        (seen, end)
    }

    /// Every packet `src` hands over (the index it carries), how the reading ended, and how
    /// many times it was idle on the way.
    fn drain(src: &mut Source) -> (Vec<u32>, Result<()>, usize) {
        let mut seen = Vec::new();
        let mut idle = 0;
        let end = loop {
            match src.read() {
                Ok(Next::Frame(f)) => {
                    let tail: [u8; 4] = f.data[f.data.len() - 4..].try_into().unwrap();
                    assert_eq!(
                        f.ts,
                        UNIX_EPOCH
                            + Duration::from_secs(
                                1_700_000_000 + u64::from(u32::from_be_bytes(tail))
                            )
                    );
                    seen.push(u32::from_be_bytes(tail));
                }
                Ok(Next::End) => break Ok(()),
                Ok(Next::Idle) => idle += 1,
                Ok(Next::Gone(_)) => panic!("a file is never gone"),
                Err(e) => break Err(e),
            }
        };
        (seen, end, idle)
    }

    /// A FIFO in a fresh directory, and a thread writing `file` into it in two parts with
    /// `pause` between them (as tcpdump -U -w - does between packets).
    fn fifo(file: Vec<u8>, pause: Duration) -> (std::path::PathBuf, std::thread::JoinHandle<()>) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "interceptor-fifo-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let p = path.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            let half = file.len() / 2;
            w.write_all(&file[..half]).unwrap();
            w.flush().unwrap();
            std::thread::sleep(pause);
            // The reader may stop early (damage); a broken pipe is no failure here.
            let _ = w.write_all(&file[half..]);
        });
        (path, writer)
    }

    /// `-I` on a FIFO (or `-`, a pipe): it cannot be mapped, so it is read as a stream, with
    /// the same packets, the same filter and the same damage report as the file; a pause of
    /// the writer is `Idle`, not the end.
    #[test]
    fn a_pipe_is_read_as_it_comes_with_the_packets_and_the_damage_of_the_file() {
        let n = (AHEAD_BATCH * 2 + 100) as u32;
        let (path, writer) = fifo(capture(n), Duration::from_millis(400));
        let mut src = Source::open_file(&path, "tcp port 80").unwrap();
        assert!(src.is_stream());
        let (even, end, idle) = drain(&mut src);
        writer.join().unwrap();
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(even, (0..n).step_by(2).collect::<Vec<_>>());
        assert!(idle >= 1, "the writer's pause was not reported");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();

        let mut cut = capture(n);
        cut.truncate(cut.len() - 3);
        let (path, writer) = fifo(cut, Duration::ZERO);
        let (seen, end, _) = drain(&mut Source::open_file(&path, "").unwrap());
        writer.join().unwrap();
        assert_eq!(seen, (0..n - 1).collect::<Vec<_>>());
        let err = format!("{:#}", end.unwrap_err());
        assert!(err.contains("truncated packet"), "{err}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    /// A directory is not "mmap: No such device"; a missing file names its path.
    #[test]
    fn a_directory_or_a_missing_file_is_named() {
        let dir = std::env::temp_dir();
        let err = Source::open_file(&dir, "").err().unwrap();
        assert_eq!(err.subject(), Subject::File);
        assert_eq!(
            err.to_string(),
            format!("{}: is a directory", dir.display())
        );
        let missing = dir.join("interceptor-no-such-capture.pcap");
        let err = Source::open_file(&missing, "").err().unwrap();
        assert_eq!(err.subject(), Subject::File);
        assert_eq!(
            err.to_string(),
            format!(
                "{}: No such file or directory (os error 2)",
                missing.display()
            )
        );
    }

    #[test]
    fn read_ahead_hands_over_every_packet_that_passes_in_order_across_batches() {
        let n = (AHEAD_BATCH * 2 + 100) as u32;
        let (all, end) = read_all(&capture(n), "");
        assert!(end.is_ok());
        assert_eq!(all, (0..n).collect::<Vec<_>>());
        let (even, end) = read_all(&capture(n), "tcp port 80");
        assert!(end.is_ok());
        assert_eq!(even, (0..n).step_by(2).collect::<Vec<_>>());
    }

    #[test]
    fn read_ahead_reports_damage_after_the_packets_before_it() {
        let n = (AHEAD_BATCH + 10) as u32;
        let mut file = capture(n);
        file.truncate(file.len() - 3);
        let (seen, end) = read_all(&file, "");
        assert_eq!(seen, (0..n - 1).collect::<Vec<_>>());
        let err = format!("{:#}", end.unwrap_err());
        assert!(err.contains("truncated packet"), "{err}");
    }
}
