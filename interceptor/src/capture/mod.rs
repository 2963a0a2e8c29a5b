//! Packet sources: live interfaces and capture files, both through libpcap.
//!
//! libpcap (the `pcap` crate) rather than a hand-written AF_PACKET socket: on Linux it
//! already opens a TPACKET_V3 memory-mapped ring, compiles tcpdump filter syntax to
//! classic BPF and attaches it in the kernel, reports kernel drops, handles `any`, and reads
//! both pcap and pcapng; redoing that would be a second, less tested copy of the same.

pub mod packet;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use pcap::{Active, Capture, Offline};

use packet::LinkType;

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
    Live(Capture<Active>),
    File(Capture<Offline>),
}

pub struct Source {
    handle: Handle,
    link: LinkType,
    device: Option<String>,
}

/// One captured packet.
pub struct Frame<'a> {
    pub ts: SystemTime,
    pub data: &'a [u8],
    /// Length on the wire (the capture may hold less).
    pub len: u32,
    pub packet: pcap::Packet<'a>,
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

fn link_of(dl: pcap::Linktype) -> Result<LinkType> {
    LinkType::from_pcap(dl.0).ok_or_else(|| {
        anyhow!(
            "unsupported data link type {} ({}): sniff decodes Ethernet, Linux cooked and raw IP",
            dl.0,
            dl.get_name().unwrap_or_default()
        )
    })
}

fn interface_exists(dev: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(dev) else {
        return false;
    };
    // SAFETY: name is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

impl Source {
    pub fn open_file(path: &Path, filter: &str) -> Result<Source> {
        let mut cap =
            Capture::from_file(path).map_err(|e| anyhow!("-I {}: {e}", path.display()))?;
        if !filter.is_empty() {
            cap.filter(filter, true)
                .map_err(|e| anyhow!("FILTER {filter:?}: {e}"))?;
        }
        let link = link_of(cap.get_datalink()).with_context(|| format!("-I {}", path.display()))?;
        Ok(Source {
            handle: Handle::File(cap),
            link,
            device: None,
        })
    }

    pub fn open_live(cfg: &LiveConfig, filter: &str) -> Result<Source> {
        if cfg.device != "any" && !interface_exists(&cfg.device) {
            return Err(anyhow!("-d {}: no such interface", cfg.device));
        }
        let cap = Capture::from_device(cfg.device.as_str())
            .map_err(|e| anyhow!("-d {}: {e}", cfg.device))?
            .snaplen(cfg.snaplen)
            .promisc(cfg.promisc)
            .buffer_size(cfg.buffer)
            .timeout(cfg.poll.as_millis().clamp(1, i32::MAX as u128) as i32);
        let mut cap = cap.open().map_err(|e| {
            let msg = e.to_string();
            if msg.contains("ermission") || msg.contains("not permitted") {
                anyhow!("-d {}: {msg} (live capture needs CAP_NET_RAW)", cfg.device)
            } else {
                anyhow!("-d {}: {msg}", cfg.device)
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
            cap.filter(filter, true)
                .map_err(|e| anyhow!("FILTER {filter:?}: {e}"))?;
        }
        let link = link_of(cap.get_datalink()).with_context(|| format!("-d {}", cfg.device))?;
        Ok(Source {
            handle: Handle::Live(cap),
            link,
            device: Some(cfg.device.clone()),
        })
    }

    pub fn link(&self) -> LinkType {
        self.link
    }

    pub fn is_live(&self) -> bool {
        matches!(self.handle, Handle::Live(_))
    }

    pub fn next(&mut self) -> Result<Next<'_>> {
        let r = match &mut self.handle {
            Handle::Live(c) => c.next_packet(),
            Handle::File(c) => c.next_packet(),
        };
        match r {
            Ok(p) => {
                let ts = UNIX_EPOCH
                    + Duration::new(
                        p.header.ts.tv_sec.max(0) as u64,
                        (p.header.ts.tv_usec.clamp(0, 999_999) as u32) * 1000,
                    );
                Ok(Next::Frame(Frame {
                    ts,
                    data: p.data,
                    len: p.header.len,
                    packet: p,
                }))
            }
            Err(pcap::Error::TimeoutExpired) => Ok(Next::Idle),
            Err(pcap::Error::NoMorePackets) => Ok(Next::End),
            Err(e) => {
                let msg = e.to_string();
                if let Some(dev) = &self.device {
                    if dev != "any"
                        && (!interface_exists(dev)
                            || msg.contains("disappeared")
                            || msg.contains("went down"))
                    {
                        return Ok(Next::Gone(format!("interface {dev} is gone ({msg})")));
                    }
                }
                Err(anyhow!("reading packets: {msg}"))
            }
        }
    }

    /// The kernel's counters for a live capture.
    pub fn kernel(&mut self) -> Option<KernelCounters> {
        match &mut self.handle {
            Handle::Live(c) => c.stats().ok().map(|s| KernelCounters {
                received: u64::from(s.received),
                dropped: u64::from(s.dropped),
                if_dropped: u64::from(s.if_dropped),
            }),
            Handle::File(_) => None,
        }
    }

    /// A pcap writer with this source's link type (`-O`).
    pub fn savefile(&self, path: &Path) -> Result<pcap::Savefile> {
        match &self.handle {
            Handle::Live(c) => c.savefile(path),
            Handle::File(c) => c.savefile(path),
        }
        .map_err(|e| anyhow!("-O {}: {e}", path.display()))
    }
}
