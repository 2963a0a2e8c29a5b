#!/usr/bin/env bash
# Benchmark of `interceptor sniff --shadow`: pairing and diffing throughput on a pcap of
# mirrored exchanges (100k by default), and peak memory. In the same run, on the same file:
#   - `interceptor sniff --json` without --shadow: the capture/reassembly/HTTP pipeline
#     alone, so the difference is what pairing and diffing cost;
#   - the seeds' way of looking at mirrored traffic: `ngrep -tW byline '' 'tcp port 3000'`
#     dumping it (the ratio to it is printed), and
#     `tshark` dissecting HTTP (both only print; neither pairs nor compares).
#
#   scripts/bench-shadow.sh [REQUESTS]      (needs /usr/bin/time: apt-get install time)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
N=${1:-100000}
[[ $N =~ ^[0-9]+$ ]] && [ "$N" -gt 0 ] || { echo "bench-shadow: REQUESTS=$N: expected a positive count" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "bench-shadow: /usr/bin/time missing (apt-get install -y time)" >&2; exit 1; }

cargo build --release --quiet -p interceptor -p xtask
bin=target/release/interceptor
work=$(mktemp -d /tmp/bench-shadow.XXXXXX)
trap 'rm -rf "$work"' EXIT
pcap=$work/mirrored.pcap
target/release/xtask shadow-pcap --requests "$N" --connections 16 --out "$pcap"
size=$(stat -c %s "$pcap")

# measure NAME CMD...: wall seconds and peak RSS (KiB) of CMD, output discarded.
measure() {
  local name=$1; shift
  /usr/bin/time -f '%e %M' -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  read -r secs rss <"$work/t"
  last_secs=$secs last_rss=$rss
  awk -v name="$name" -v s="$secs" -v rss="$rss" -v n="$N" -v size="$size" 'BEGIN {
    if (s <= 0) s = 0.005  # below /usr/bin/time resolution
    printf "%-34s %8.2f s %10.0f exchanges/s %8.1f MB/s %8d KiB peak RSS\n", name, s, 2 * n / s, size / s / 1e6, rss
  }'
}

echo "pcap: $N mirrored requests ($((2 * N)) exchanges), $((size / 1000000)) MB"
measure "interceptor sniff --shadow --json" "$bin" sniff --shadow --json -q -I "$pcap"
shadow_secs=$last_secs shadow_rss=$last_rss
measure "interceptor sniff --shadow (text)" "$bin" sniff --shadow -q -I "$pcap"
measure "interceptor sniff --json" "$bin" sniff --json -q -I "$pcap"
# The sniffer maps capture files, so their pages count in every interceptor line's RSS; the
# difference to the plain sniffer is what pairing and diffing hold.
awk -v n="$N" -v s="$shadow_secs" -v b="$last_secs" -v r="$shadow_rss" -v rb="$last_rss" 'BEGIN {
  d = s - b; if (d <= 0) d = 0.005
  printf "pairing + diffing alone: %.2f s, %.0f pairs/s, %d KiB more peak RSS than the plain sniffer\n", s - b, n / d, r - rb
}'
if command -v ngrep >/dev/null; then
  # The seeds' command, as bench-sniff.sh times it.
  measure "ngrep -tW byline '' 'tcp port 3000'" ngrep -q -tW byline -I "$pcap" '' 'tcp port 3000'
  awk -v n="$last_secs" -v s="$shadow_secs" 'BEGIN { if (s <= 0) s = 0.005
    printf "--shadow --json is %.1fx faster than ngrep'"'"'s dump (target: >= 5x)\n", n / s }'
fi
command -v tshark >/dev/null && measure "tshark -Y http" tshark -r "$pcap" -Y http -T fields -e http.host -e http.response.code

# The comparison itself must hold: every pair found, and every one different by imageUrl.
"$bin" sniff --shadow --json -q -I "$pcap" | tail -n1 >"$work/summary"
python3 - "$work/summary" "$N" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
assert s["type"] == "shadow_summary", s
assert s["pairs"] == n and s["different"] == n, s
assert s["top_differences"][0]["where"] == "body:[*].imageUrl", s
print(f"checked: {s['pairs']} pairs, {s['different']} different, top: {s['top_differences'][0]}")
PY
