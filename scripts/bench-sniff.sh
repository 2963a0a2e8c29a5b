#!/usr/bin/env bash
# Benchmark of `interceptor sniff` against its peers, measured in the same run:
#
#   1. Offline: three captures, each read by ngrep (the seeds' plain dump) and by
#      interceptor, output to /dev/null:
#        plain    wrk -> nginx keep-alive across a veth between two namespaces, taken by
#                 tcpdump (PACKETS packets, default 160000; 8 connections, port 80, a
#                 390-byte page of `x`), also read by tshark;
#        catalog  the same with the catalog's pretty-printed JSON items (scripts/lab/
#                 catalog.py's v1, 502 bytes) served by nginx on port 3000, 16 connections:
#                 the seeds' command `ngrep -tW byline -I FILE '' 'tcp port 3000'` with
#                 the program name swapped, in the three text layouts and --json;
#        mirrored `cargo xtask shadow-pcap` (SHADOW_REQUESTS mirrored catalog requests):
#                 --shadow, text and JSON.
#      Every row runs once per round, RUNS rounds (tshark: 3 runs, apart), so a slow spell
#      of this shared machine falls on all rows alike; the table has medians, each row's
#      ratio to ngrep on the same capture, and peak RSS from one more run of each.
#      The --serve rows run the same reads with the live view and metrics served: until
#      the capture has ended (the server stays up after a file until interrupted: it is
#      interrupted when it says the capture ended, and timed to its exit), without a
#      browser and with one
#      (a client reading /events from the start). Their cost is the speed each keeps
#      against the same command without --serve, run just before it in the same round:
#      the median of the rounds' ratios.
#   2. Live: interceptor sniff on the client's veth while wrk drives it at full speed for
#      LIVE_SECS (0: skipped); the kernel's drop counter must stay at 0.
#   3. Memory: a synthetic capture with FLOWS (default 100000; 0: skipped) concurrent open
#      flows; peak RSS of the sniffer reading it.
#
# To measure something more, add a `row` line in section 1.
#
# Needs root (namespaces). Usage: scripts/bench-sniff.sh
# (env: PACKETS, RUNS, LIVE_SECS, FLOWS, SHADOW_REQUESTS; BIN, the interceptor binary to
# measure; PCAP_DIR, a directory to keep the captures in and reuse them from, so that
# two builds can be measured on the same files)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

PACKETS=${PACKETS:-160000}
RUNS=${RUNS:-5}
LIVE_SECS=${LIVE_SECS:-5}
FLOWS=${FLOWS:-100000}
SHADOW_REQUESTS=${SHADOW_REQUESTS:-100000}

[ "$(id -u)" = 0 ] || { echo "bench-sniff: run as root (network namespaces)" >&2; exit 1; }
for tool in tshark ngrep wrk nginx tcpdump python3; do
  command -v "$tool" >/dev/null || { echo "bench-sniff: $tool missing: run scripts/setup.sh" >&2; exit 1; }
done
if [ ! -x /usr/bin/time ]; then
  echo "bench-sniff: installing GNU time (peak RSS)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi

# The release binary as it is meant to be shipped: built with profile-guided optimisation
# (`cargo xtask pgo`, trained on a synthetic capture of other traffic, not these).
# BIN=... measures another build instead.
cargo build --release -q -p interceptor -p xtask
cargo build --release -q -p interceptor-sniff --example synth_flows
BIN=${BIN:-$(cargo xtask pgo)}
SYNTH=$PWD/target/release/examples/synth_flows
XTASK=$PWD/target/release/xtask

work=$(mktemp -d /tmp/bench-sniff.XXXXXX)
chmod 0755 "$work"
pcaps=${PCAP_DIR:-$work}
mkdir -p "$pcaps"
tag=$$
NC=bsc$tag NS=bss$tag VC=bvc$tag VS=bvs$tag
cleanup() {
  for ns in "$NC" "$NS"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap 'cleanup 2>/dev/null' EXIT

in_c() { nsenter --net=/run/netns/"$NC" -- "$@"; }
in_s() { nsenter --net=/run/netns/"$NS" -- "$@"; }

ip netns add "$NC"; ip netns add "$NS"
ip link add "$VC" netns "$NC" type veth peer name "$VS" netns "$NS"
in_c sh -c "ip link set lo up; ip addr add 10.250.0.1/24 dev $VC; ip link set $VC up"
in_s sh -c "ip link set lo up; ip addr add 10.250.0.2/24 dev $VS; ip link set $VS up"

# nginx, two sites. Port 80: a page sized so the capture averages about 475 bytes a packet
# (the issue's 160k packets / 76 MB): one request and one response segment per exchange.
# Port 3000: the catalog's GET /items as scripts/lab/catalog.py lays it out (v1, indented
# JSON), as a static file.
mkdir -p "$work/www" "$work/catalog"
head -c 390 /dev/zero | tr '\0' 'x' | fold -w 64 > "$work/www/item.json"
python3 -c 'import sys, json; sys.path.insert(0, "scripts/lab"); import catalog
sys.stdout.write(json.dumps(catalog.catalog("v1"), indent=2))' > "$work/catalog/items"
cat > "$work/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/error.log;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 10.250.0.2:80; location / { root $work/www; } }
  server { listen 10.250.0.2:3000; default_type "application/json; charset=utf-8";
    location / { root $work/catalog; } } }
CONF
chmod -R a+rX "$work"
in_s nginx -c "$work/nginx.conf" -p "$work" 2>/dev/null &
for port in 80 3000; do
  for _ in $(seq 50); do in_s ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.1; done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# --- 1. offline --------------------------------------------------------------------
# capture FILE PORT CONNECTIONS PATH: PACKETS packets of wrk -> nginx:PORT/PATH, with no
# kernel drops (kept in PCAP_DIR and reused from there when it is set).
capture() {
  local file=$1 port=$2 conns=$3 path=$4 td wrk
  [ -s "$file" ] && [ -n "${PCAP_DIR:-}" ] && return 0
  in_c tcpdump -i "$VC" -B 131072 -s 0 -c "$PACKETS" -w "$file.part" tcp port "$port" 2>"$work/tcpdump.err" &
  td=$!
  sleep 1
  nsenter --net=/run/netns/"$NC" -- wrk -t1 -c"$conns" -d60s "http://10.250.0.2:$port/$path" >/dev/null &
  wrk=$!   # nsenter execs wrk: this is wrk's pid, so the kill below stops it
  wait "$td" || true
  kill "$wrk" 2>/dev/null || true; wait "$wrk" 2>/dev/null || true
  grep -q '^0 packets dropped by kernel' "$work/tcpdump.err" || { echo "bench-sniff: tcpdump dropped packets:" >&2; cat "$work/tcpdump.err" >&2; exit 1; }
  mv "$file.part" "$file"
}
plain=$pcaps/keepalive.pcap catalog=$pcaps/catalog.pcap mirrored=$pcaps/mirrored-$SHADOW_REQUESTS.pcap
capture "$plain" 80 8 item.json
capture "$catalog" 3000 16 items
[ -s "$mirrored" ] || "$XTASK" shadow-pcap --requests "$SHADOW_REQUESTS" --connections 16 --out "$mirrored" >/dev/null
mb() { awk -v b="$(stat -c %s "$1")" 'BEGIN {printf "%.1f", b/1048576}'; }
packets() { tcpdump -r "$1" -qn 2>/dev/null | wc -l; }

# Seconds one run of CMD takes, output to /dev/null. The clock is bash's own
# EPOCHREALTIME (microseconds), read right before and after CMD. (This script used to run
# CMD under GNU time between two forks of `date`: that timed /bin/true at 3.5 ms, this
# at 0.9 ms, and the 2.6 ms of wrappers was a few percent of a 0.1 s run.)
# A command that times itself (serve-run, below) leaves its own figure in $ELAPSED.
export ELAPSED=$work/elapsed
time_once() {
  local start end
  rm -f "$ELAPSED"
  start=${EPOCHREALTIME/[^0-9]/}
  "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; return 1; }
  end=${EPOCHREALTIME/[^0-9]/}
  if [ -s "$ELAPSED" ]; then cat "$ELAPSED"; return 0; fi
  awk -v n=$((end - start)) 'BEGIN {printf "%.3f\n", n / 1e6}'
}

# Peak RSS (kB) of one run of CMD under GNU time, kept apart from the timed runs.
peak_rss() {
  /usr/bin/time -f '%M' -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; return 1; }
  cat "$work/t"
}

# serve-run [--client] CMD...: CMD is `interceptor sniff … --serve 127.0.0.1:PORT` on a
# file; runs it until it says the capture ended, then interrupts it at once. Its time is
# from CMD's start to its exit (written to $ELAPSED), as the row without --serve is timed
# to its exit: both then include the process's teardown (unmapping the capture file
# alone takes milliseconds). With --client, a client reads /events from the moment the
# server is up (the sniffer says so before it reads the capture) to the end: a browser
# connected all along. The client has started (Python's own start-up, tens of
# milliseconds of CPU, is not a browser's cost) before the clock does, and waits to be
# told, not polling, that the server is up.
cat > "$work/sse-client.py" <<'PY'
import socket, sys
port = int(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"GET /events HTTP/1.1\r\nHost: bench\r\n\r\n")
while s.recv(1 << 16):
    pass
PY
cat > "$work/serve-run" <<'SH'
#!/usr/bin/env bash
set -u
client=0
[ "$1" = --client ] && { client=1; shift; }
port=${SERVE_PORT:?}
if [ "$client" = 1 ]; then
  ready=$(mktemp -u) go=$(mktemp -u); mkfifo "$ready" "$go"
  python3 "$(dirname "$0")/sse-client.py" "$port" <"$go" >"$ready" & cl=$!
  exec 4>"$go"
  read -r _ <"$ready"; rm -f "$ready" "$go"
fi
fifo=$(mktemp -u); mkfifo "$fifo"
start=${EPOCHREALTIME/[^0-9]/}
"$@" 2>"$fifo" &
pid=$!
exec 3<"$fifo"; rm -f "$fifo"
ok=1
while read -r line <&3; do
  case $line in
    *"serving the live view"*) [ "$client" = 0 ] || { echo go >&4; exec 4>&-; } ;;
    *"capture ended"*) ok=0; break ;;
  esac
done
kill -INT "$pid" 2>/dev/null; wait "$pid"
end=${EPOCHREALTIME/[^0-9]/}
[ "$ok" = 1 ] || awk -v n=$((end - start)) 'BEGIN {printf "%.3f\n", n / 1e6}' >"${ELAPSED:?}"
[ -z "${cl:-}" ] || { kill "$cl" 2>/dev/null; wait "$cl" 2>/dev/null; }
exit "$ok"
SH
chmod +x "$work/serve-run"
export SERVE_PORT=$((20000 + tag % 20000))
serve=("$work/serve-run") serve_client=("$work/serve-run" --client)
addr=127.0.0.1:$SERVE_PORT

# row CAPTURE LABEL CMD...: one row of the table. The first row of each capture is the
# reference its other rows are compared with (ngrep's).
row_cap=() row_label=() row_cmd=()
row() {
  row_cap+=("$1") row_label+=("$2")
  shift 2
  row_cmd+=("$(printf '%q ' "$@")")
}
row plain '`ngrep -tW byline -I` (plain dump)' ngrep -tW byline -I "$plain" '' 'tcp port 80'
row plain '`interceptor sniff -tW byline -I`' "$BIN" sniff -q -tW byline -I "$plain" '' 'tcp port 80'
row plain '`interceptor sniff -I --json`' "$BIN" sniff -q -I "$plain" --json '' 'tcp port 80'
row plain '`interceptor sniff -I --json --serve`' "${serve[@]}" "$BIN" sniff -I "$plain" --json --serve "$addr" '' 'tcp port 80'
row plain '`… --json --serve`, a browser reading /events' "${serve_client[@]}" "$BIN" sniff -I "$plain" --json --serve "$addr" '' 'tcp port 80'
row catalog "\`ngrep -tW byline -I F '' 'tcp port 3000'\` (the seeds')" ngrep -tW byline -I "$catalog" '' 'tcp port 3000'
row catalog '`interceptor sniff -tW byline` (same arguments)' "$BIN" sniff -tW byline -I "$catalog" '' 'tcp port 3000'
row catalog '`interceptor sniff -tW normal`' "$BIN" sniff -tW normal -I "$catalog" '' 'tcp port 3000'
row catalog '`interceptor sniff -tW single`' "$BIN" sniff -tW single -I "$catalog" '' 'tcp port 3000'
row catalog '`interceptor sniff --json`' "$BIN" sniff --json -I "$catalog" '' 'tcp port 3000'
row catalog '`interceptor sniff --json --serve`' "${serve[@]}" "$BIN" sniff --json -I "$catalog" --serve "$addr" '' 'tcp port 3000'
row catalog '`… --json --serve`, a browser reading /events' "${serve_client[@]}" "$BIN" sniff --json -I "$catalog" --serve "$addr" '' 'tcp port 3000'
row mirrored '`ngrep -tW byline -I F` (prints only)' ngrep -tW byline -I "$mirrored" '' 'tcp port 3000'
row mirrored '`interceptor sniff --shadow` (text)' "$BIN" sniff --shadow -I "$mirrored" '' 'tcp port 3000'
row mirrored '`interceptor sniff --shadow --serve` (text)' "${serve[@]}" "$BIN" sniff --shadow -I "$mirrored" --serve "$addr" '' 'tcp port 3000'
row mirrored '`interceptor sniff --shadow --json`' "$BIN" sniff --shadow --json -I "$mirrored" '' 'tcp port 3000'
row mirrored '`interceptor sniff --shadow --json --serve`' "${serve[@]}" "$BIN" sniff --shadow --json -I "$mirrored" --serve "$addr" '' 'tcp port 3000'
row mirrored '`… --shadow --json --serve`, a browser reading /events' "${serve_client[@]}" "$BIN" sniff --shadow --json -I "$mirrored" --serve "$addr" '' 'tcp port 3000'

# The pairing is checked, not only timed: every exchange found, every mirror paired.
exchanges() { "$BIN" sniff -q --json -I "$1" '' "tcp port $2" | grep -c '"type":"exchange"'; }
ex_plain=$(exchanges "$plain" 80) ex_catalog=$(exchanges "$catalog" 3000)
tshark_exchanges=$(tshark -r "$plain" -Y http.response -T fields -e http.response.code 2>/dev/null | wc -l)
shadow_summary=$("$BIN" sniff -q --shadow --json -I "$mirrored" '' 'tcp port 3000' | tail -n1)
pairs=$(echo "$shadow_summary" | sed -E 's/.*"pairs":([0-9]+).*/\1/')
[ "$pairs" = "$SHADOW_REQUESTS" ] || { echo "bench-sniff: --shadow paired $pairs of $SHADOW_REQUESTS: $shadow_summary" >&2; exit 1; }

tshark_cmd=(tshark -r "$plain" -Y http -T fields -e http.request.method -e http.request.uri
  -e http.host -e http.response.code -e http.content_length_header)
t_ts=()
for _ in 1 2 3; do t_ts+=("$(time_once "${tshark_cmd[@]}")"); done
t_tshark=$(printf '%s\n' "${t_ts[@]}" | median)
m_tshark=$(peak_rss "${tshark_cmd[@]}")

# Round after round, each row once.
times=()   # times[i] holds row i's times, one per line
for _ in $(seq "$RUNS"); do
  for i in "${!row_cmd[@]}"; do
    times[i]+="$(eval "time_once ${row_cmd[i]}")"$'\n'
  done
done
declare -A ref
t_med=() m_rss=()
for i in "${!row_cmd[@]}"; do
  t_med[i]=$(printf '%s' "${times[i]}" | median)
  m_rss[i]=$(eval "peak_rss ${row_cmd[i]}")
  [ -n "${ref[${row_cap[i]}]:-}" ] || ref[${row_cap[i]}]=${t_med[i]}
done

# --- 2. live -----------------------------------------------------------------------
live=skipped
if [ "$LIVE_SECS" -gt 0 ]; then
  # nsenter execs the sniffer, so $! is its pid (a function would put a shell in between,
  # and background shells ignore SIGINT).
  nsenter --net=/run/netns/"$NC" -- "$BIN" sniff -d "$VC" --json '' 'tcp port 80' >"$work/live.json" 2>"$work/live.err" &
  sn=$!
  for _ in $(seq 50); do grep -q 'listening on' "$work/live.err" && break; sleep 0.1; done
  in_c wrk -t1 -c8 -d"${LIVE_SECS}s" http://10.250.0.2/item.json >"$work/wrk.out"
  kill -INT "$sn"; wait "$sn"
  live_stats=$(grep '"type":"stats"' "$work/live.json")
  live_ex=$(grep -c '"type":"exchange"' "$work/live.json" || true)
  kdrop=$(echo "$live_stats" | sed -E 's/.*"kernel_dropped":([0-9]+).*/\1/')
  kpk=$(echo "$live_stats" | sed -E 's/.*"kernel_received":([0-9]+).*/\1/')
  wrk_reqs=$(awk '/requests in/ {print $1}' "$work/wrk.out")
  live="wrk ${LIVE_SECS}s at full speed, $wrk_reqs requests; sniffer saw $kpk packets, reported $live_ex exchanges, kernel drops: $kdrop"
fi

# --- 3. memory with many concurrent flows ----------------------------------------------
memory=skipped
if [ "$FLOWS" -gt 0 ]; then
  "$SYNTH" "$work/flows.pcap" "$FLOWS"
  flows_cmd=("$BIN" sniff -q -I "$work/flows.pcap" --json)
  t_flows=$(time_once "${flows_cmd[@]}")
  m_flows=$(peak_rss "${flows_cmd[@]}")
  flows_seen=$("${flows_cmd[@]}" | tail -n1 | sed -E 's/.*"max_concurrent_flows":([0-9]+).*/\1/')
  memory="$flows_seen concurrent open flows (synthetic): peak RSS $((m_flows / 1024)) MB in ${t_flows}s"
fi

# --- report ------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a/b}'; }
# Each --serve row against the row of the same capture and command without it (the row
# whose command is the --serve row's with the wrapper and `--serve ADDR` taken out): the
# speed it keeps, base time over --serve time, taken round by round (the two ran one
# after the other, under the same load) and then the median of the rounds; with the
# lowest and highest round.
serve_costs() {
  local i j base
  for i in "${!row_cmd[@]}"; do
    case ${row_cmd[i]} in *--serve*) ;; *) continue ;; esac
    base=$(printf '%s' "${row_cmd[i]}" | sed -E "s|^[^ ]*serve-run (--client )?||; s| --serve [^ ]+||")
    for j in "${!row_cmd[@]}"; do
      [ "$(printf '%s' "${row_cmd[j]}" | sed -E 's| -q | |')" = "$base" ] || continue
      printf '  %s %s: %s\n' "${row_cap[i]}" "${row_label[i]}" \
        "$(paste <(printf '%s' "${times[j]}") <(printf '%s' "${times[i]}") |
          awk '{print $1 / $2}' | sort -g |
          awk '{v[NR] = $1} END {m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
            lost = m < 1 ? sprintf("%.0f%% lost", 100 * (1 - m)) : "none lost";
            printf "keeps %.2f of its speed (%s; rounds %.2f to %.2f)", m, lost, v[1], v[NR]}')"
    done
  done
}
cat <<REPORT

interceptor sniff benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)), medians of $RUNS rounds
interceptor: ${BIN#$PWD/}
plain:    $(packets "$plain") packets, $(mb "$plain") MB, wrk -> nginx (390 B of x), 8 keep-alive connections; exchanges: interceptor $ex_plain, tshark $tshark_exchanges
catalog:  $(packets "$catalog") packets, $(mb "$catalog") MB, wrk -> nginx (catalog JSON, 502 B), 16 keep-alive connections; exchanges: $ex_catalog
mirrored: $(packets "$mirrored") packets, $(mb "$mirrored") MB, cargo xtask shadow-pcap, $SHADOW_REQUESTS requests mirrored; pairs: $pairs

| capture | command (output to /dev/null) | median wall (s) | ngrep / it | peak RSS (MB) |
|---|---|---:|---:|---:|
| plain | \`tshark -Y http -T fields\` (5 HTTP fields; 3 runs) | $t_tshark | $(ratio "${ref[plain]}" "$t_tshark") | $((m_tshark / 1024)) |
REPORT
for i in "${!row_cmd[@]}"; do
  echo "| ${row_cap[i]} | ${row_label[i]} | ${t_med[i]} | $(ratio "${ref[${row_cap[i]}]}" "${t_med[i]}") | $((m_rss[i] / 1024)) |"
done
cat <<REPORT
(target: text and --json >= 10x ngrep, --shadow >= 5x)
serve cost (speed with --serve over the same command's without, median of the rounds; target: at most 10% lost):
$(serve_costs)
live: $live
memory: $memory
REPORT
[ "$LIVE_SECS" = 0 ] || [ "$kdrop" = 0 ] || { echo "bench-sniff: the kernel dropped packets during live capture" >&2; exit 1; }
