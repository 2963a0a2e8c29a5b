#!/usr/bin/env bash
# Installs what interceptor needs on a fresh Debian machine, as root. Idempotent: a
# second run finds everything in place and returns in a second or two.
#
#   - Debian packages: the peers the tests and benchmarks run against (iptables, nginx,
#     haproxy, tshark, ngrep, wrk, ...) and libpcap for the filter compiler.
#   - rust-src for the nightly toolchain (the eBPF crate builds core with -Z build-std).
#   - llvm-tools for the default toolchain (llvm-profdata, for `cargo xtask pgo`).
#   - bpf-linker, built against the nightly's own LLVM so the two agree on bitcode.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "setup: run as root (apt-get and network namespaces need it)" >&2; exit 1; }

# --- Debian packages --------------------------------------------------------------
PKGS=(iptables nftables iproute2 tcpdump tshark ngrep nginx-light haproxy wrk curl
      bpftool libpcap-dev python3 util-linux procps psmisc time)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no without a prompt.
  echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts nginx and haproxy as services on install; the tests run their own.
  for svc in nginx haproxy; do
    command -v systemctl >/dev/null && systemctl disable --now "$svc" >/dev/null 2>&1 || true
    pkill -x "$svc" 2>/dev/null || true
  done
fi

# --- Rust toolchains ----------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
command -v rustup >/dev/null || { echo "setup: rustup not found; this machine kind ships one" >&2; exit 1; }
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
sysroot=$(rustc +nightly --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/src/rust/library" ]; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi
# llvm-profdata for the profile-guided release build (cargo xtask pgo).
if [ ! -x "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata" ]; then
  log "adding llvm-tools to the default toolchain"
  rustup component add llvm-tools
fi

# --- bpf-linker against the nightly's LLVM ------------------------------------------
# The linker loads libLLVM at run time through LLVM_PREFIX/lib, so that folder must
# outlive this script: it lives beside cargo's own data, never under /tmp.
llvm_lib=$(ls "$sysroot"/lib/libLLVM.so.*-rust-*-nightly 2>/dev/null | head -n1 || true)
[ -n "$llvm_lib" ] || { echo "setup: no libLLVM.so.*-rust-*-nightly in $sysroot/lib" >&2; exit 1; }
llvm_name=$(basename "$llvm_lib")                       # libLLVM.so.22.1-rust-1.97.0-nightly
llvm_major=$(echo "$llvm_name" | sed -E 's/^libLLVM\.so\.([0-9]+)\..*/\1/')
prefix="${CARGO_HOME:-$HOME/.cargo}/llvm-nightly-$llvm_major"
mkdir -p "$prefix/lib"
ln -sfn "$llvm_lib" "$prefix/lib/$llvm_name"
ln -sfn "$llvm_lib" "$prefix/lib/libLLVM.so"

stamp="$prefix/bpf-linker.built-against"
if ! command -v bpf-linker >/dev/null || [ "$(cat "$stamp" 2>/dev/null)" != "$llvm_name" ] \
   || ! bpf-linker --version >/dev/null 2>&1; then
  log "building bpf-linker against $llvm_name (about 4 minutes)"
  LLVM_PREFIX="$prefix" cargo install bpf-linker --locked --force \
    --no-default-features --features "llvm-$llvm_major"
  echo "$llvm_name" > "$stamp"
fi

log "ready: $(bpf-linker --version 2>&1 | head -n1), $(rustc +nightly --version)"
