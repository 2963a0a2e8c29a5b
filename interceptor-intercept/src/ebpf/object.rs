//! The eBPF object, built by build.rs from `interceptor-ebpf/` and embedded here.

/// The ELF of `interceptor-ebpf`, 8-byte aligned as the ELF parser wants it; empty when
/// the build skipped it (`INTERCEPTOR_SKIP_EBPF_BUILD`).
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor-ebpf.o"));

/// The object, or why this binary has none.
pub(crate) fn object() -> anyhow::Result<&'static [u8]> {
    if OBJECT.is_empty() {
        anyhow::bail!(
            "this binary was built with INTERCEPTOR_SKIP_EBPF_BUILD set, so it carries no eBPF programs; \
rebuild without it (after scripts/setup.sh) or use --mode iptables"
        );
    }
    Ok(OBJECT)
}
