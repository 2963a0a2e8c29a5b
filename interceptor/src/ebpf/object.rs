//! The eBPF object, built by build.rs from `interceptor-ebpf/` and embedded here.

/// The ELF of `interceptor-ebpf`, 8-byte aligned as the ELF parser wants it.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor-ebpf.o"));
