#!/usr/bin/env bash
# Benchmark: app -> sidecar -> server through no interception, the iptables mode and the
# eBPF mode, all in the same run, on this machine only (two network namespaces).
#
#   app:      wrk, uid 1000, in the pod's cgroup and network namespace
#   sidecar:  HAProxy, uid 1337, in the pod; forwards to the original destination
#   server:   nginx in a second namespace behind a veth, answering "ok"
#
# Modes:
#   none      wrk targets the sidecar's own port (15002, a fixed upstream): the same path
#             with no interception at all, the floor for the other two
#   iptables  interceptor init --mode iptables (istio-iptables' rules) in the pod
#   ebpf      interceptor init --mode ebpf --cgroup <pod cgroup>
#
# Measures, per mode and round: keep-alive requests/s with p50/p99 latency, and new
# connections/s (Connection: close, one request per connection). Rounds alternate the
# modes, in a rotating order, so background load hits them alike; medians are reported.
#
#   sudo scripts/bench-intercept.sh [-d SECONDS] [-r ROUNDS] [-c CONNECTIONS]
set -euo pipefail

DURATION=5
ROUNDS=3
CONNS=32
while getopts "d:r:c:" o; do
  case $o in
    d) DURATION=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    c) CONNS=$OPTARG ;;
    *) echo "usage: $0 [-d SECONDS] [-r ROUNDS] [-c CONNECTIONS]" >&2; exit 2 ;;
  esac
done

[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 1; }
for t in wrk haproxy nginx iptables nsenter setpriv; do
  command -v "$t" >/dev/null || { echo "bench: $t missing; run scripts/setup.sh" >&2; exit 1; }
done
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# INTERCEPTOR_BIN: a binary already built (skips the release build).
if [ -z "${INTERCEPTOR_BIN:-}" ]; then
  cargo build --release -q -p interceptor
fi
BIN=${INTERCEPTOR_BIN:-$PWD/target/release/interceptor}

ID=b$$
POD=${ID}pod
SRV=${ID}srv
CG=/sys/fs/cgroup/unified/${ID}
WORK=$(mktemp -d)
POD_IP=10.232.0.1
SRV_IP=10.232.0.2
PIDS=()

cleanup() {
  set +e
  nsenter --net=/run/netns/$POD "$BIN" cleanup --mode ebpf --cgroup "$CG" >/dev/null 2>&1
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  [ -d "$CG" ] && echo 1 > "$CG/cgroup.kill" 2>/dev/null
  for ns in $POD $SRV; do
    for p in $(ip netns pids $ns 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
  sleep 0.3
  ip netns del $POD 2>/dev/null; ip netns del $SRV 2>/dev/null
  rmdir "$CG" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

in_pod() { nsenter --net=/run/netns/$POD "$@"; }
# Runs a command in the pod's cgroup as uid:gid.
in_pod_as() {
  local ids=$1; shift
  in_pod sh -c "echo \$\$ > $CG/cgroup.procs && exec setpriv --reuid=${ids%:*} --regid=${ids#*:} --clear-groups -- \"\$@\"" sh "$@"
}
wait_port() {
  local ns=$1 port=$2
  for _ in $(seq 100); do
    nsenter --net=/run/netns/$ns ss -Hltn "sport = :$port" | grep -q . && return 0
    sleep 0.05
  done
  echo "bench: nothing listens on $port in $ns" >&2; cat "$WORK"/*.log "$WORK"/*.err 2>/dev/null >&2; exit 1
}

# --- the pod and the server ----------------------------------------------------------
ip netns add $POD; ip netns add $SRV
ip -n $POD link set lo up; ip -n $SRV link set lo up
ip link add ${ID}a netns $POD type veth peer name ${ID}b netns $SRV
ip -n $POD addr add $POD_IP/24 dev ${ID}a; ip -n $POD link set ${ID}a up
ip -n $SRV addr add $SRV_IP/24 dev ${ID}b; ip -n $SRV link set ${ID}b up
mkdir "$CG"

cat > "$WORK/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK;
  proxy_temp_path $WORK;
  fastcgi_temp_path $WORK;
  uwsgi_temp_path $WORK;
  scgi_temp_path $WORK;
  keepalive_requests 1000000;
  server { listen 8080 backlog=4096; location / { return 200 "ok\n"; } }
}
EOF
nsenter --net=/run/netns/$SRV nginx -c "$WORK/nginx.conf" & PIDS+=($!)
wait_port $SRV 8080

cat > "$WORK/haproxy.cfg" <<EOF
global
  maxconn 4000
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend outbound
  bind 127.0.0.1:15001
  default_backend orig
frontend direct
  bind 127.0.0.1:15002
  default_backend upstream
backend orig
  server orig 0.0.0.0:0
backend upstream
  server upstream $SRV_IP:8080
EOF
chmod 644 "$WORK/haproxy.cfg"; chmod 755 "$WORK"
in_pod_as 1337:1337 /usr/sbin/haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & PIDS+=($!)
wait_port $POD 15001

# --- interception on and off ----------------------------------------------------------
iptables_on() { in_pod "$BIN" init --mode iptables >/dev/null; }
iptables_off() { in_pod "$BIN" cleanup --mode iptables >/dev/null; }
ebpf_on() { in_pod "$BIN" init --mode ebpf --cgroup "$CG" >/dev/null; }
ebpf_off() { in_pod "$BIN" cleanup --mode ebpf --cgroup "$CG" >/dev/null; }

# Prints "rps p50_ms p99_ms" for one wrk run.
run_wrk() {
  local url=$1; shift
  in_pod_as 1000:1000 wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url" > "$WORK/wrk.out" 2>&1 || true
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    END { if (rps == "") { exit 1 } printf "%.0f %.3f %.3f\n", rps, p50, p99 }' "$WORK/wrk.out" \
    || { echo "bench: wrk failed:" >&2; cat "$WORK/wrk.out" >&2; exit 1; }
}

# Checks that the request really went through the sidecar to the server.
check_path() {
  local url=$1
  local body
  body=$(in_pod_as 1000:1000 curl -sS -m 5 "$url")
  [ "$body" = "ok" ] || { echo "bench: $url answered '$body'" >&2; exit 1; }
}

declare -A RESULTS
MODES=(none iptables ebpf)
for round in $(seq "$ROUNDS"); do
  # Rotate the order each round so no mode always runs first or last.
  order=()
  for i in 0 1 2; do order+=("${MODES[$(( (i + round - 1) % 3 ))]}"); done
  for mode in "${order[@]}"; do
    case $mode in
      none) url=http://127.0.0.1:15002/ ;;
      iptables) iptables_on; url=http://$SRV_IP:8080/ ;;
      ebpf) ebpf_on; url=http://$SRV_IP:8080/ ;;
    esac
    check_path "$url"
    ka=$(run_wrk "$url")
    nc=$(run_wrk "$url" -H "Connection: close" | cut -d' ' -f1)
    RESULTS[$mode,$round]="$ka $nc"
    echo "round $round $mode: rps/p50/p99 $ka, new conns/s $nc" >&2
    case $mode in
      iptables) iptables_off ;;
      ebpf) ebpf_off ;;
    esac
  done
done

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
col() { local mode=$1 i=$2; for r in $(seq "$ROUNDS"); do echo "${RESULTS[$mode,$r]}" | cut -d' ' -f"$i"; done | median; }

printf '\n%-9s %12s %10s %10s %16s\n' mode "req/s" "p50 ms" "p99 ms" "new conns/s"
for mode in none iptables ebpf; do
  printf '%-9s %12s %10s %10s %16s\n' $mode "$(col $mode 1)" "$(col $mode 2)" "$(col $mode 3)" "$(col $mode 4)"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "ebpf / iptables: req/s x$(ratio "$(col ebpf 1)" "$(col iptables 1)"), new conns/s x$(ratio "$(col ebpf 4)" "$(col iptables 4)"), p50 x$(ratio "$(col ebpf 2)" "$(col iptables 2)"), p99 x$(ratio "$(col ebpf 3)" "$(col iptables 3)") (latency: lower is better)"
echo "($ROUNDS rounds of ${DURATION}s per measure, $CONNS connections, medians; $(nproc) cores, $(uname -r))"
