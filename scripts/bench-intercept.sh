#!/usr/bin/env bash
# Benchmark: app -> sidecar -> server through no interception, the iptables mode and the
# eBPF mode, over a matrix of workloads, all in one run, on this machine only (network
# namespaces the script makes and removes).
#
#   app:      wrk -t1, uid 1000, in the pod's cgroup and network namespace
#   sidecar:  HAProxy (nbthread 1), uid 1337, in the pod; forwards to the original
#             destination (`server 0.0.0.0:0`)
#   server:   nginx (1 worker) serving catalog v1's JSON items (scripts/lab/catalog.py)
#
# Each mode has a pod namespace (and cgroup) of its own, intercepted once at the start, so
# no measure includes an init or a cleanup and no mode sees another's state (rules,
# conntrack entries, map entries). Every pod reaches the one server namespace two ways,
# the two topologies:
#
#   veth     pod --veth-- server                         (10.232.<pod>.2)
#   router   pod --veth-- node (forwards) --veth-- server (10.233.100.2), as scripts/lab.sh
#            builds the seed topology: pods behind a node namespace routing between veths
#
# Modes:
#   none      wrk targets the sidecar's own ports (fixed upstreams): the same sidecar and
#             server with no interception at all, a reference for the other two
#   iptables  interceptor init --mode iptables (istio-iptables' rules) in the pod
#   ebpf      interceptor init --mode ebpf --cgroup <pod cgroup>
#
# Cells: topology x HAProxy mode (tcp, http) x connections x keep-alive or a new
# connection per request (`Connection: close`). In each cell the modes alternate over the
# rounds, in a rotating order, so background load hits them alike; medians are reported
# with the ebpf/iptables ratio per cell.
#
#   sudo scripts/bench-intercept.sh [-d SECONDS] [-r ROUNDS] [-c "1 8 64"] [-p "tcp http"]
#        [-k "ka close"] [-t "veth router"] [-m "none iptables ebpf"] [-B BIN] [-S]
#
#   -d  seconds per measure (default 2)      -r  rounds per cell (default 3)
#   -c  connection counts                    -p  HAProxy modes
#   -k  ka (keep-alive) and/or close         -t  topologies
#   -m  modes (iptables and ebpf at least for the ratio)
#   -B  BIN: also measure mode ebpfB, the eBPF mode of another interceptor binary (a
#       build with changed programs), in a pod of its own, with its ratio to ebpf (B/e)
#   -S  also enable kernel.bpf_stats_enabled and print, per cell, each eBPF program's runs
#       per request and ns per run (the stats add two clock reads to every program run,
#       so the eBPF measures of such a run read a little low)
set -euo pipefail

DURATION=2
ROUNDS=3
CONNS_LIST="1 8 64"
HAPROXY_MODES="tcp http"
KEEPALIVE_LIST="ka close"
TOPOLOGIES="veth router"
MODES_LIST="none iptables ebpf"
STATS=0
BIN_B=
usage() {
  echo "usage: $0 [-d SECONDS] [-r ROUNDS] [-c CONNS...] [-p \"tcp http\"] [-k \"ka close\"] [-t \"veth router\"] [-m \"none iptables ebpf\"] [-B BIN] [-S]" >&2
  exit 2
}
while getopts "d:r:c:p:k:t:m:B:S" o; do
  case $o in
    d) DURATION=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    c) CONNS_LIST=$OPTARG ;;
    p) HAPROXY_MODES=$OPTARG ;;
    k) KEEPALIVE_LIST=$OPTARG ;;
    t) TOPOLOGIES=$OPTARG ;;
    m) MODES_LIST=$OPTARG ;;
    B) BIN_B=$(realpath "$OPTARG") ;;
    S) STATS=1 ;;
    *) usage ;;
  esac
done
for v in $HAPROXY_MODES; do case $v in tcp|http) ;; *) usage ;; esac; done
for v in $KEEPALIVE_LIST; do case $v in ka|close) ;; *) usage ;; esac; done
for v in $TOPOLOGIES; do case $v in veth|router) ;; *) usage ;; esac; done
for v in $MODES_LIST; do case $v in none|iptables|ebpf) ;; *) usage ;; esac; done
for v in $CONNS_LIST $DURATION $ROUNDS; do [[ $v =~ ^[1-9][0-9]*$ ]] || usage; done
[ -z "$BIN_B" ] || [ -x "$BIN_B" ] || { echo "bench: -B $BIN_B: not an executable" >&2; exit 2; }
[ -z "$BIN_B" ] || MODES_LIST="$MODES_LIST ebpfB"
read -r -a MODES <<<"$MODES_LIST"

[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 1; }
for t in wrk haproxy nginx iptables nsenter setpriv curl python3; do
  command -v "$t" >/dev/null || { echo "bench: $t missing; run scripts/setup.sh" >&2; exit 1; }
done
[ $STATS = 0 ] || command -v bpftool >/dev/null || { echo "bench: -S needs bpftool" >&2; exit 1; }
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# INTERCEPTOR_BIN: a binary already built (skips the release build).
if [ -z "${INTERCEPTOR_BIN:-}" ]; then
  cargo build --release -q -p interceptor
fi
BIN=${INTERCEPTOR_BIN:-$PWD/target/release/interceptor}

ID=b$$
SRV=${ID}srv
NODE=${ID}node
WORK=$(mktemp -d)
SRV_ROUTER_IP=10.233.100.2
SRV_CG=/sys/fs/cgroup/unified/${ID}srv
PIDS=()
STATS_BEFORE=$(sysctl -n kernel.bpf_stats_enabled 2>/dev/null || echo 0)

# Pod of each mode: index, namespace, cgroup.
declare -A IDX=([none]=0 [iptables]=1 [ebpf]=2 [ebpfB]=3)
pod_ns() { echo "${ID}p${IDX[$1]}"; }
pod_cg() { echo "/sys/fs/cgroup/unified/${ID}p${IDX[$1]}"; }
veth_server_ip() { echo "10.232.${IDX[$1]}.2"; }

cleanup() {
  set +e
  [ "$STATS" = 1 ] && sysctl -qw kernel.bpf_stats_enabled="$STATS_BEFORE"
  nsenter --net=/run/netns/"$(pod_ns ebpf)" "$BIN" cleanup --mode ebpf --cgroup "$(pod_cg ebpf)" >/dev/null 2>&1
  [ -n "$BIN_B" ] && nsenter --net=/run/netns/"$(pod_ns ebpfB)" "$BIN_B" cleanup --mode ebpf --cgroup "$(pod_cg ebpfB)" >/dev/null 2>&1
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for m in none iptables ebpf ebpfB; do
    [ -d "$(pod_cg $m)" ] && echo 1 > "$(pod_cg $m)/cgroup.kill" 2>/dev/null
  done
  for ns in $(pod_ns none) $(pod_ns iptables) $(pod_ns ebpf) $(pod_ns ebpfB) $SRV $NODE; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
  sleep 0.3
  for ns in $(pod_ns none) $(pod_ns iptables) $(pod_ns ebpf) $(pod_ns ebpfB) $SRV $NODE; do
    ip netns del "$ns" 2>/dev/null
  done
  [ -d "$SRV_CG" ] && echo 1 > "$SRV_CG/cgroup.kill" 2>/dev/null
  sleep 0.1
  for m in none iptables ebpf ebpfB; do rmdir "$(pod_cg $m)" 2>/dev/null; done
  rmdir "$SRV_CG" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

in_ns() { local ns=$1; shift; nsenter --net=/run/netns/"$ns" "$@"; }
# Runs a command in mode $1's pod, in its cgroup, as uid:gid $2.
in_pod_as() {
  local mode=$1 ids=$2; shift 2
  in_ns "$(pod_ns "$mode")" sh -c "echo \$\$ > $(pod_cg "$mode")/cgroup.procs && exec setpriv --reuid=${ids%:*} --regid=${ids#*:} --clear-groups -- \"\$@\"" sh "$@"
}
wait_port() {
  local ns=$1 port=$2
  for _ in $(seq 100); do
    in_ns "$ns" ss -Hltn "sport = :$port" | grep -q . && return 0
    sleep 0.05
  done
  echo "bench: nothing listens on $port in $ns" >&2; cat "$WORK"/*.log "$WORK"/*.err 2>/dev/null >&2; exit 1
}
# Settings every namespace gets alike: the close cells open tens of thousands of
# connections, which must not run out of ports to TIME_WAIT.
tune_ns() {
  in_ns "$1" sysctl -qw net.ipv4.ip_local_port_range="10000 65000" net.ipv4.tcp_tw_reuse=1
}

# --- namespaces: server, node (router), one pod per mode -------------------------------
ip netns add $SRV; ip netns add $NODE
for ns in $SRV $NODE; do in_ns $ns ip link set lo up; tune_ns $ns; done
in_ns $NODE sysctl -qw net.ipv4.ip_forward=1
ip link add ${ID}ns netns $NODE type veth peer name ${ID}sn netns $SRV
in_ns $NODE ip addr add 10.233.100.1/24 dev ${ID}ns; in_ns $NODE ip link set ${ID}ns up
in_ns $SRV ip addr add $SRV_ROUTER_IP/24 dev ${ID}sn; in_ns $SRV ip link set ${ID}sn up
in_ns $SRV ip route add 10.233.0.0/16 via 10.233.100.1
for m in "${MODES[@]}"; do
  i=${IDX[$m]} ns=$(pod_ns "$m")
  ip netns add "$ns"; in_ns "$ns" ip link set lo up; tune_ns "$ns"
  mkdir "$(pod_cg "$m")"
  # veth topology: straight to the server.
  ip link add ${ID}v${i}p netns "$ns" type veth peer name ${ID}v${i}s netns $SRV
  in_ns "$ns" ip addr add 10.232.$i.1/24 dev ${ID}v${i}p; in_ns "$ns" ip link set ${ID}v${i}p up
  in_ns $SRV ip addr add 10.232.$i.2/24 dev ${ID}v${i}s; in_ns $SRV ip link set ${ID}v${i}s up
  # router topology: the pod's default route goes through the node.
  ip link add ${ID}r${i}p netns "$ns" type veth peer name ${ID}r${i}n netns $NODE
  in_ns "$ns" ip addr add 10.233.$i.2/24 dev ${ID}r${i}p; in_ns "$ns" ip link set ${ID}r${i}p up
  in_ns $NODE ip addr add 10.233.$i.1/24 dev ${ID}r${i}n; in_ns $NODE ip link set ${ID}r${i}n up
  in_ns "$ns" ip route add default via 10.233.$i.1
done

# --- the server: nginx with catalog v1's items ------------------------------------------
mkdir -p "$WORK/www"
/usr/bin/python3 -c 'import json, sys; sys.path.insert(0, "scripts/lab"); import catalog; sys.stdout.write(json.dumps(catalog.catalog("v1"), indent=2))' > "$WORK/www/items"
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
  server {
    listen 8080 backlog=4096;
    root $WORK/www;
    location / { default_type application/json; try_files /items =404; }
  }
}
EOF
chmod 755 "$WORK"; chmod -R a+rX "$WORK/www"
mkdir "$SRV_CG"
in_ns $SRV sh -c "echo \$\$ > $SRV_CG/cgroup.procs && exec nginx -c $WORK/nginx.conf" & PIDS+=($!)
wait_port $SRV 8080
BODY=$(cat "$WORK/www/items")

# --- sidecars ----------------------------------------------------------------------------
declare -A HAPROXY_PID
# start_sidecars tcp|http: HAProxy in every pod, in that mode.
start_sidecars() {
  local hmode=$1 m
  for m in "${MODES[@]}"; do
    local cfg=$WORK/haproxy-$m.cfg
    {
      cat <<EOF
global
  maxconn 4000
  nbthread 1
defaults
  mode $hmode
  timeout connect 2s
  timeout client 30s
  timeout server 30s
EOF
      [ "$hmode" = http ] && echo "  option http-keep-alive"
      cat <<EOF
frontend outbound
  bind 127.0.0.1:15001
  default_backend orig
frontend direct_veth
  bind 127.0.0.1:15002
  default_backend veth
frontend direct_router
  bind 127.0.0.1:15003
  default_backend router
backend orig
  server orig 0.0.0.0:0
backend veth
  server veth $(veth_server_ip "$m"):8080
backend router
  server router $SRV_ROUTER_IP:8080
EOF
    } > "$cfg"
    chmod 644 "$cfg"
    in_pod_as "$m" 1337:1337 /usr/sbin/haproxy -f "$cfg" -db >"$WORK/haproxy-$m.log" 2>&1 &
    HAPROXY_PID[$m]=$!; PIDS+=($!)
    wait_port "$(pod_ns "$m")" 15001
  done
}
stop_sidecars() {
  local m
  for m in "${MODES[@]}"; do
    kill "${HAPROXY_PID[$m]}" 2>/dev/null || true
    wait "${HAPROXY_PID[$m]}" 2>/dev/null || true
  done
}

# --- interception, once per pod -----------------------------------------------------------
for m in "${MODES[@]}"; do
  case $m in
    iptables) in_ns "$(pod_ns iptables)" "$BIN" init --mode iptables >/dev/null ;;
    ebpf) in_ns "$(pod_ns ebpf)" "$BIN" init --mode ebpf --cgroup "$(pod_cg ebpf)" >/dev/null ;;
    ebpfB) in_ns "$(pod_ns ebpfB)" "$BIN_B" init --mode ebpf --cgroup "$(pod_cg ebpfB)" >/dev/null ;;
  esac
done

# The URL the app calls in mode $1, topology $2.
url_of() {
  local mode=$1 topo=$2
  case $mode,$topo in
    none,veth) echo http://127.0.0.1:15002/items ;;
    none,router) echo http://127.0.0.1:15003/items ;;
    *,veth) echo "http://$(veth_server_ip "$mode"):8080/items" ;;
    *,router) echo "http://$SRV_ROUTER_IP:8080/items" ;;
  esac
}

# Checks that the request really goes through the sidecar to the server.
check_path() {
  local mode=$1 url=$2 body
  body=$(in_pod_as "$mode" 1000:1000 curl -sS -m 5 "$url")
  [ "$body" = "$BODY" ] || { echo "bench: $mode $url answered '$body'" >&2; exit 1; }
}

# CPU time (µs) used so far by mode $1's pod (wrk, HAProxy) and the server (nginx): the
# scheduler's exact runtime, softirq work done in their context included (the loopback
# and veth receive paths mostly run there).
cpu_usec() {
  cat "$(pod_cg "$1")/cpu.stat" "$SRV_CG/cpu.stat" | awk '$1 == "usage_usec" { t += $2 } END { print t }'
}

# Prints "rps p50_ms p99_ms errors cpu_us_per_request" for one wrk run in mode $1's pod.
run_wrk() {
  local mode=$1 conns=$2 url=$3; shift 3
  local cpu0 cpu1
  cpu0=$(cpu_usec "$mode")
  in_pod_as "$mode" 1000:1000 wrk -t1 -c"$conns" -d"${DURATION}s" --latency "$@" "$url" > "$WORK/wrk.out" 2>&1 || true
  cpu1=$(cpu_usec "$mode")
  awk -v cpu=$((cpu1 - cpu0)) '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^Requests\/sec:/ { rps = $2 }
    /requests in/ { n = $1 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
    /Non-2xx/ { err += $NF }
    END { if (rps == "" || n == 0) { exit 1 } printf "%.0f %.3f %.3f %d %.1f\n", rps, p50, p99, err, cpu / n }' "$WORK/wrk.out" \
    || { echo "bench: wrk failed:" >&2; cat "$WORK/wrk.out" >&2; exit 1; }
}

# eBPF program statistics (-S): the ids of each eBPF pod's programs, and their counters.
declare -A PROGS
find_progs() {
  local mode=$1 pin_dir l socks
  pin_dir=$(ls -d /sys/fs/bpf/interceptor/"$(stat -c %i "$(pod_cg "$mode")")"-* | head -1)
  for l in "$pin_dir"/link_*; do
    bpftool -j link show pinned "$l" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prog_id"])'
  done
  # sk_msg hangs off the sockhash, not a link: the program of that name using the map.
  socks=$(bpftool -j map show pinned "$pin_dir/SOCKETS" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  bpftool -j prog show | python3 -c '
import json, sys
for p in json.load(sys.stdin):
    if p.get("name") == "skmsg" and '"$socks"' in p.get("map_ids", []):
        print(p["id"])' | head -1
}
if [ $STATS = 1 ]; then
  sysctl -qw kernel.bpf_stats_enabled=1
  for m in ebpf ebpfB; do
    [[ " ${MODES[*]} " == *" $m "* ]] && PROGS[$m]=$(find_progs "$m" | tr '\n' ' ')
  done
fi
# "name run_cnt run_time_ns" for each program of mode $1.
prog_stats() {
  local id
  for id in ${PROGS[$1]}; do
    bpftool -j prog show id "$id" | python3 -c 'import json,sys; p=json.load(sys.stdin); print(p["name"], p.get("run_cnt", 0), p.get("run_time_ns", 0))'
  done
}

declare -A RESULTS STATS_OUT
CELLS=()
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date +%s)
for hmode in $HAPROXY_MODES; do
  start_sidecars "$hmode"
  for topo in $TOPOLOGIES; do
    for m in "${MODES[@]}"; do check_path "$m" "$(url_of "$m" "$topo")"; done
    for conns in $CONNS_LIST; do
      for ka in $KEEPALIVE_LIST; do
        cell="$topo $hmode $conns $ka"
        CELLS+=("$cell")
        extra=()
        [ "$ka" = close ] && extra=(-H "Connection: close")
        for round in $(seq "$ROUNDS"); do
          # Rotate the order each round so no mode always runs first or last.
          order=()
          for i in $(seq 0 $((${#MODES[@]} - 1))); do
            order+=("${MODES[$(( (i + round - 1) % ${#MODES[@]} ))]}")
          done
          for mode in "${order[@]}"; do
            [ -n "${PROGS[$mode]:-}" ] && before=$(prog_stats "$mode")
            r=$(run_wrk "$mode" "$conns" "$(url_of "$mode" "$topo")" "${extra[@]}")
            if [ -n "${PROGS[$mode]:-}" ]; then
              # "name runs ns requests" per program, summed over the rounds at the end.
              reqs=$(awk -v r="${r%% *}" -v d="$DURATION" 'BEGIN { print r * d }')
              STATS_OUT[$cell,$mode]+=$(paste <(echo "$before") <(prog_stats "$mode") |
                awk -v n="$reqs" '{ print $1, $5 - $2, $6 - $3, n }')$'\n'
            fi
            RESULTS[$cell,$mode,$round]=$r
            echo "$cell round $round $mode: req/s p50 p99 errors cpu/req = $r" >&2
          done
        done
      done
    done
  done
  stop_sidecars
done
END=$(date +%s)

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
# col CELL MODE FIELD: the median over rounds of field FIELD (1 rps, 2 p50, 3 p99,
# 4 errors, 5 CPU µs per request).
col() {
  local cell=$1 mode=$2 i=$3 r
  for r in $(seq "$ROUNDS"); do echo "${RESULTS[$cell,$mode,$r]}" | cut -d' ' -f"$i"; done | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "x%.2f", a / b; else print "-" }'; }
has() { [[ " ${MODES[*]} " == *" $1 "* ]]; }
# Ratio columns: ebpf / iptables, and ebpfB / ebpf with -B.
RATIOS=()
has iptables && has ebpf && RATIOS+=("ebpf iptables e/i")
has ebpfB && has ebpf && RATIOS+=("ebpfB ebpf B/e")

# One group of columns per measure: each mode's median, then the ratios.
METRICS=("1 req/s" "2 p50 ms" "3 p99 ms" "5 CPU us/req")
echo
printf '%-6s %-5s %5s %-5s' topo proxy conns conn
for metric in "${METRICS[@]}"; do
  printf ' |'
  for m in "${MODES[@]}"; do printf ' %8s' "$m"; done
  for r in "${RATIOS[@]}"; do printf ' %6s' "${r##* }"; done
done
echo
printf '%-6s %-5s %5s %-5s' "" "" "" ""
for metric in "${METRICS[@]}"; do
  w=$(( ${#MODES[@]} * 9 + ${#RATIOS[@]} * 7 ))
  printf ' | %-*s' $((w - 1)) "${metric#* }"
done
echo
met=0 total=0
for cell in "${CELLS[@]}"; do
  read -r topo hmode conns ka <<<"$cell"
  printf '%-6s %-5s %5s %-5s' "$topo" "$hmode" "$conns" "$ka"
  for metric in "${METRICS[@]}"; do
    i=${metric%% *}
    printf ' |'
    for m in "${MODES[@]}"; do printf ' %8s' "$(col "$cell" "$m" "$i")"; done
    for r in "${RATIOS[@]}"; do
      read -r a b _ <<<"$r"
      printf ' %6s' "$(ratio "$(col "$cell" "$a" "$i")" "$(col "$cell" "$b" "$i")")"
    done
  done
  echo
  if has iptables && has ebpf; then
    total=$((total + 1))
    awk -v a="$(col "$cell" ebpf 1)" -v b="$(col "$cell" iptables 1)" 'BEGIN { exit !(a >= b) }' && met=$((met + 1))
  fi
  for m in "${MODES[@]}"; do
    for r in $(seq "$ROUNDS"); do
      e=$(echo "${RESULTS[$cell,$m,$r]}" | cut -d' ' -f4)
      [ "$e" = 0 ] || echo "  ($m round $r: $e socket errors or non-2xx answers)"
    done
  done
done
echo
echo "Medians over $ROUNDS rounds of ${DURATION}s per measure; e/i = ebpf / iptables$([ -n "$BIN_B" ] && echo ", B/e = ebpfB / ebpf")"
echo "(req/s: higher is better; latency and CPU: lower is better). CPU us/req: CPU time of the pod (wrk, HAProxy)"
echo "and the server (nginx) per request."
has iptables && has ebpf && echo "ebpf req/s >= iptables req/s in $met of $total cells."
echo "$(nproc) cores, $(uname -r); load average before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg); $((END - START)) s of measures."
if [ "$STATS" = 1 ]; then
  echo
  echo "eBPF programs per cell (bpf_stats, all rounds): runs per request, ns per run, ns per request"
  for cell in "${CELLS[@]}"; do
    for m in ebpf ebpfB; do
      [ -n "${STATS_OUT[$cell,$m]:-}" ] || continue
      printf '%-24s %-5s' "$cell" "$m"
      printf '%s' "${STATS_OUT[$cell,$m]}" | awk '
        NF == 4 { if (!($1 in runs)) order[++k] = $1; runs[$1] += $2; ns[$1] += $3; reqs[$1] += $4 }
        END { for (i = 1; i <= k; i++) { p = order[i]; if (runs[p] > 0)
          printf " %s %.2f/%.0f/%.0f", p, runs[p] / reqs[p], ns[p] / runs[p], ns[p] / reqs[p] } print "" }'
    done
  done
fi
