#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (capture file reader, packet decoder, reassembler,
# HTTP parser, and the head fast path against httparse; `cargo fuzz list`, i.e. every [[bin]]
# of fuzz/Cargo.toml) for SECS seconds each, with AddressSanitizer. Any panic, sanitizer
# report or memory over RSS_MB fails the run and leaves the input that did it under
# fuzz/artifacts/. Installs cargo-fuzz on first use.
#
# Usage: scripts/fuzz.sh [TARGET...]   (env: SECS, default 60; RSS_MB, default 2048: the
# limit includes AddressSanitizer's own quarantine, about 256 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

SECS=${SECS:-60}
RSS_MB=${RSS_MB:-2048}
case "$SECS$RSS_MB" in *[!0-9]*) echo "fuzz: SECS and RSS_MB must be numbers" >&2; exit 2 ;; esac

rustup toolchain list | grep -q '^nightly' || {
  echo "fuzz: needs the nightly toolchain: run scripts/setup.sh" >&2
  exit 1
}
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz (once)" >&2
  cargo install cargo-fuzz --locked
fi

cd fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
log=$(mktemp /tmp/fuzz.XXXXXX)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
  echo "fuzz: $t for ${SECS}s" >&2
  if ! cargo +nightly fuzz run "$t" -- -max_total_time="$SECS" -rss_limit_mb="$RSS_MB" \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "fuzz: $t failed; an input that makes it fail is kept under fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^(Done|stat::peak_rss_mb)' "$log" >&2
done
echo "fuzz: all targets ran clean" >&2
