//! Types shared between the eBPF programs (`interceptor-ebpf`) and the userspace loader.
//! `#![no_std]` so the eBPF side can use it; every type is `#[repr(C)]` so both sides agree
//! on layout.
#![no_std]
