//! Capture health while the capture runs, for a reader on another thread (the metrics of
//! `sniff --serve`): the run loop publishes its counters here every few thousand packets
//! and whenever the capture is idle, so a scrape costs the capture nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::reassembly::Stats;
use crate::sink::KernelStats;

/// Counters published by [`super::run_with`]; all totals since the capture started,
/// except `open_flows`.
#[derive(Debug, Default)]
pub struct Health {
    packets: AtomicU64,
    bytes: AtomicU64,
    flows: AtomicU64,
    open_flows: AtomicU64,
    gaps: AtomicU64,
    gap_bytes: AtomicU64,
    evicted: AtomicU64,
    kernel_received: AtomicU64,
    kernel_dropped: AtomicU64,
    if_dropped: AtomicU64,
}

/// What [`Health`] held at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub packets: u64,
    pub bytes: u64,
    /// Flows seen.
    pub flows: u64,
    /// Flows in the table now.
    pub open_flows: u64,
    /// Holes in a TCP stream that reassembly skipped.
    pub gaps: u64,
    pub gap_bytes: u64,
    /// Flows pushed out of the full table.
    pub evicted: u64,
    /// Kernel counters; zero for files.
    pub kernel_received: u64,
    pub kernel_dropped: u64,
    pub if_dropped: u64,
}

impl Health {
    pub(crate) fn publish(&self, packets: u64, bytes: u64, tcp: &Stats, open_flows: usize) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.packets, packets);
        set(&self.bytes, bytes);
        set(&self.flows, tcp.flows);
        set(&self.open_flows, open_flows as u64);
        set(&self.gaps, tcp.gaps);
        set(&self.gap_bytes, tcp.gap_bytes);
        set(&self.evicted, tcp.evicted);
    }

    pub(crate) fn publish_kernel(&self, k: KernelStats) {
        self.kernel_received.store(k.received, Ordering::Relaxed);
        self.kernel_dropped.store(k.dropped, Ordering::Relaxed);
        self.if_dropped.store(k.if_dropped, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            flows: get(&self.flows),
            open_flows: get(&self.open_flows),
            gaps: get(&self.gaps),
            gap_bytes: get(&self.gap_bytes),
            evicted: get(&self.evicted),
            kernel_received: get(&self.kernel_received),
            kernel_dropped: get(&self.kernel_dropped),
            if_dropped: get(&self.if_dropped),
        }
    }
}
