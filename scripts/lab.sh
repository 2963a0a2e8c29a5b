#!/usr/bin/env bash
# The mirroring scenario of seed 000, in network namespaces on this machine:
#
#   webapp pod (10.123.1.2)          node                 catalog-v1 pod (10.123.2.2:3000)
#     app (uid 1000): curl catalog ─┐  <lab>-w ── routes ── <lab>-c1
#     sidecar nginx (uid 1337) :15001│                      catalog-v2 pod (10.123.3.2:3000)
#       → v1, mirror → v2 with      │           └───────── <lab>-c2
#         Host catalog.istioinaction-shadow:80, same x-request-id
#     interceptor init: the app's outbound TCP → 15001
#
# The app calls the catalog "service" at 10.123.100.10:3000 (no pod has that address: the
# sidecar takes the connection first, as in a mesh). Capture on the node side of the
# webapp's veth to see both requests and both answers:
#
#   scripts/lab.sh up             # build it (as root)
#   scripts/lab.sh app 20         # the app calls the catalog 20 times (no count: forever)
#   scripts/lab.sh sniff [ARGS]   # interceptor sniff --shadow -d <lab>-w '' 'tcp port 3000' ARGS
#   scripts/lab.sh down           # remove it
#   scripts/lab.sh demo [COUNT]   # all of the above in one go
#
# Settings (environment):
#   LAB           prefix of namespace and interface names, at most 11 characters (default lab)
#   LAB_DIR       where configs, logs and pids go (default /tmp/interceptor-$LAB)
#   INTERCEPTOR   the interceptor binary (default target/debug/interceptor of this checkout)
#   SHADOW_VERSION  what the mirror target serves: v2 (adds imageUrl, default) or v1
#   LAB_INTERCEPT   the command run in the webapp pod to intercept its outbound traffic
#                   (default: $INTERCEPTOR init with the sidecar's ports and uid)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
LAB=${LAB:-lab}
LAB_DIR=${LAB_DIR:-/tmp/interceptor-$LAB}
INTERCEPTOR=${INTERCEPTOR:-$root/target/debug/interceptor}
SHADOW_VERSION=${SHADOW_VERSION:-v2}
# The Debian python (setup.sh installs python3): a per-user one under /root is not
# readable by the unprivileged uid the catalog runs as.
PYTHON=${PYTHON:-/usr/bin/python3}
APP_UID=1000
PROXY_UID=1337
SERVICE_VIP=10.123.100.10

NODE=$LAB-node WEB=$LAB-web V1=$LAB-v1 V2=$LAB-v2
WEB_VETH=$LAB-w

die() { echo "lab: $*" >&2; exit 1; }
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }
as_uid() { local uid=$1; shift; setpriv --reuid="$uid" --regid="$uid" --clear-groups -- "$@"; }

wait_listen() { # ns port
  for _ in $(seq 100); do
    [ -n "$(in_ns "$1" ss -Hltn "sport = :$2")" ] && return 0
    sleep 0.1
  done
  die "nothing listens on port $2 in $1 after 10 s (logs in $LAB_DIR)"
}

# start NS UID NAME CMD...: a background process in a namespace, output to $LAB_DIR/NAME.log.
start() {
  local ns=$1 uid=$2 name=$3; shift 3
  nohup nsenter --net="/run/netns/$ns" -- setpriv --reuid="$uid" --regid="$uid" --clear-groups -- \
    "$@" >"$LAB_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$LAB_DIR/$name.pid"
  # `down` kills it; disowned, the shell neither waits for it nor reports its death.
  disown $!
}

up() {
  [ "$(id -u)" = 0 ] || die "run as root (namespaces, veths, iptables)"
  [ ${#LAB} -le 11 ] || die "LAB=$LAB: at most 11 characters (interface names are limited to 15)"
  case $SHADOW_VERSION in v1|v2) ;; *) die "SHADOW_VERSION=$SHADOW_VERSION: expected v1 or v2" ;; esac
  [ -x "$INTERCEPTOR" ] || die "INTERCEPTOR=$INTERCEPTOR: not an executable (cargo build first)"
  ip netns list | grep -qw "^$NODE" && die "$NODE exists: run '$0 down' first"
  mkdir -p "$LAB_DIR"
  chmod 755 "$LAB_DIR"
  # Whatever fails from here on, leave nothing half built.
  trap 'echo "lab: up failed, tearing down" >&2; down' EXIT

  for ns in "$NODE" "$WEB" "$V1" "$V2"; do
    ip netns add "$ns"
    in_ns "$ns" ip link set lo up
  done
  in_ns "$NODE" sysctl -qw net.ipv4.ip_forward=1
  local i=1 ns pod
  for pod in "$WEB:w" "$V1:c1" "$V2:c2"; do
    ns=${pod%%:*}
    local veth=$LAB-${pod##*:}
    ip link add "$veth" netns "$NODE" type veth peer name eth0 netns "$ns"
    in_ns "$NODE" ip addr add "10.123.$i.1/24" dev "$veth"
    in_ns "$NODE" ip link set "$veth" up
    in_ns "$ns" ip addr add "10.123.$i.2/24" dev eth0
    in_ns "$ns" ip link set eth0 up
    in_ns "$ns" ip route add default via "10.123.$i.1"
    i=$((i + 1))
  done

  start "$V1" 65534 catalog-v1 "$PYTHON" "$here/lab/catalog.py" --version v1 --port 3000
  start "$V2" 65534 catalog-v2 "$PYTHON" "$here/lab/catalog.py" --version "$SHADOW_VERSION" --port 3000
  sed -e "s|@LAB_DIR@|$LAB_DIR|g" -e "s|@V1@|10.123.2.2|g" -e "s|@V2@|10.123.3.2|g" \
    "$here/lab/sidecar.conf.in" >"$LAB_DIR/sidecar.conf"
  install -d -o "$PROXY_UID" -g "$PROXY_UID" "$LAB_DIR/nginx"
  touch "$LAB_DIR/nginx.log" && chown "$PROXY_UID:$PROXY_UID" "$LAB_DIR/nginx.log"
  chown "$PROXY_UID:$PROXY_UID" "$LAB_DIR"
  start "$WEB" "$PROXY_UID" sidecar nginx -p "$LAB_DIR/nginx" -c "$LAB_DIR/sidecar.conf" -g 'daemon off;'
  wait_listen "$V1" 3000
  wait_listen "$V2" 3000
  wait_listen "$WEB" 15001

  # istio-init's command line: outbound to 15001, inbound to 15006, uid 1337 left alone.
  local intercept=${LAB_INTERCEPT:-"$INTERCEPTOR init -p 15001 -z 15006 -u $PROXY_UID -m REDIRECT -i '*' -b '*'"}
  in_ns "$WEB" sh -c "$intercept" >"$LAB_DIR/init.log" 2>&1 || { cat "$LAB_DIR/init.log" >&2; die "interception failed: $intercept"; }
  trap - EXIT

  cat <<EOF
lab '$LAB' is up: webapp 10.123.1.2 (sidecar :15001, uid $PROXY_UID), catalog v1 10.123.2.2:3000,
catalog v2 10.123.3.2:3000 serving $SHADOW_VERSION; the node's veth to the webapp is $WEB_VETH.
  $0 app 10      # the app calls http://catalog.istioinaction:3000/items 10 times
  $0 sniff       # interceptor sniff --shadow -d $WEB_VETH '' 'tcp port 3000'
EOF
}

# app [COUNT]: the webapp's own calls, as uid $APP_UID, through the interception.
app() {
  local n=${1:-0} k=0
  [[ $n =~ ^[0-9]+$ ]] || die "app $n: expected a count of requests (0: forever)"
  while [ "$n" = 0 ] || [ $k -lt "$n" ]; do
    in_ns "$WEB" setpriv --reuid=$APP_UID --regid=$APP_UID --clear-groups -- \
      curl -sS -o /dev/null -w '%{http_code}\n' --max-time 5 \
      --resolve "catalog.istioinaction:3000:$SERVICE_VIP" http://catalog.istioinaction:3000/items
    k=$((k + 1))
    if [ "$n" = 0 ]; then sleep 1; fi
  done
}

sniff() {
  in_ns "$NODE" "$INTERCEPTOR" sniff --shadow -d "$WEB_VETH" "$@" '' 'tcp port 3000'
}

# demo [COUNT]: the whole scenario in one go: up, the app calls the catalog COUNT times
# (default 5) while the node sniffs with --shadow, then down. Each request is two exchanges
# (primary and shadow), so the sniffer stops by itself after 2 * COUNT.
demo() {
  local n=${1:-5}
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "demo $n: expected a positive count of requests"
  up
  trap down EXIT
  ( sleep 1; app "$n" >/dev/null ) &
  local app_pid=$!
  sniff -n $((2 * n))
  # Only the app: a bare `wait` would also wait for the lab's servers, which never end.
  wait "$app_pid"
}

down() {
  for ns in "$WEB" "$V1" "$V2" "$NODE"; do
    ip netns list | grep -qw "^$ns" || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$LAB_DIR"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  app) shift; app "$@" ;;
  demo) shift; demo "$@" ;;
  sniff) shift; sniff "$@" ;;
  *) echo "usage: $0 up|app [COUNT]|sniff [ARGS]|down|demo [COUNT]   (see the comment at the top)" >&2; exit 2 ;;
esac
