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
      bpftool libpcap-dev python3 util-linux procps psmisc time
      podman buildah runc busybox-static containernetworking-plugins chromium)
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

# --- Manifest validator (tests/tests/manifests.rs, deploy/) ------------------------------
# kubernetes-validate checks deploy/ offline against the Kubernetes schemas it bundles. It
# lives in its own venv of Debian's python3 (whose venv module is python3-venv); the test
# runs tests/manifests/validate.py with this venv's python.
kv_venv=/opt/interceptor-venv
kv_version=1.37.0
if ! ls -d "$kv_venv"/lib/python3*/site-packages/kubernetes_validate-"$kv_version".dist-info \
     >/dev/null 2>&1 || ! "$kv_venv/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  if ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'install ok installed'; then
    log "installing Debian packages: python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
  fi
  log "installing kubernetes-validate $kv_version into $kv_venv"
  "$kv_venv/bin/python" -c '' 2>/dev/null || /usr/bin/python3 -m venv --clear "$kv_venv"
  "$kv_venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$kv_version"
fi

# --- Browser test (tests/browser/view.test.mjs: playwright-core driving Debian's chromium) --
# `npm ci` from the committed lock, skipped while node_modules was installed from that very
# lock. This machine kind ships Node.js 20; Debian's nodejs (18) is only the fallback, below
# playwright-core's wish (>= 20).
browser_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/browser"
if [ -f "$browser_dir/package-lock.json" ]; then
  if ! command -v npm >/dev/null; then
    log "installing Debian packages: nodejs npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
  fi
  lock_sum=$(sha256sum "$browser_dir/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$browser_dir/node_modules/.lock-sha256" 2>/dev/null)" != "$lock_sum" ]; then
    log "installing the browser test's npm packages (npm ci in tests/browser)"
    (cd "$browser_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$lock_sum" > "$browser_dir/node_modules/.lock-sha256"
  fi
fi

# --- Container tests (tests/tests/container.rs, cargo xtask image) ------------------------
# podman 4.3 builds its local pause image (a pod's infra container) from catatonit, so
# `podman pod create` fails without it; no registry is needed.
if ! dpkg-query -W -f='${Status}' catatonit 2>/dev/null | grep -q 'install ok installed'; then
  log "installing Debian packages: catatonit"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends catatonit >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends catatonit >/dev/null; }
fi

log "ready: $(bpf-linker --version 2>&1 | head -n1), $(rustc +nightly --version)"
