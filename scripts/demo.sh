#!/usr/bin/env bash
# The main job end to end, on its own: installs what is missing, builds, then in network
# namespaces:
#  1. a "pod" with an app (uid 1000) and a sidecar proxy (HAProxy, uid 1337, outbound
#     :15001, inbound :15006): `interceptor init` inside it, requests going through the
#     sidecar in both directions, the sidecar's own traffic left alone, `cleanup`;
#  2. the seeds' mirroring scenario (scripts/lab.sh): a webapp pod whose nginx sidecar
#     mirrors to catalog v2 with Host catalog.istioinaction-shadow:80, `interceptor init` in
#     it, and `interceptor sniff --shadow -d <webapp's veth> '' 'tcp port 3000'` on the node
#     showing what v2 (which adds imageUrl) would have answered differently.
# Everything it makes is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "== building interceptor"
cargo build --release --locked -q -p interceptor
BIN=$PWD/target/release/interceptor

POD=icpt-demo-pod PEER=icpt-demo-peer WORK=$(mktemp -d)
cleanup() {
  for ns in $POD $PEER; do
    for pid in $(ip netns pids $ns 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del $ns 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
cleanup; WORK=$(mktemp -d); chmod 755 "$WORK"  # the app and sidecar run as other uids
in_pod()  { nsenter --net=/run/netns/$POD -- "$@"; }
in_peer() { nsenter --net=/run/netns/$PEER -- "$@"; }

echo "== namespaces: pod 10.123.0.2 <-veth-> peer 10.123.0.3"
ip netns add $POD; ip netns add $PEER
ip link add icpt-demo0 netns $POD type veth peer name icpt-demo1 netns $PEER
in_pod  sh -c 'ip link set lo up; ip addr add 10.123.0.2/24 dev icpt-demo0; ip link set icpt-demo0 up'
in_peer sh -c 'ip link set lo up; ip addr add 10.123.0.3/24 dev icpt-demo1; ip link set icpt-demo1 up'

# Servers: one in the peer (what the app calls), one in the pod (what the peer calls).
mkdir -p "$WORK/www"; echo "hello from $PEER" > "$WORK/www/index.html"
mkdir -p "$WORK/app";  echo "hello from the app in $POD" > "$WORK/app/index.html"
in_peer /usr/bin/python3 -m http.server --bind 10.123.0.3 --directory "$WORK/www" 8080 >/dev/null 2>&1 &
in_pod setpriv --reuid=1000 --regid=1000 --clear-groups -- \
  /usr/bin/python3 -m http.server --bind 0.0.0.0 --directory "$WORK/app" 8080 >/dev/null 2>&1 &

# The sidecar: HAProxy as uid 1337. `server 0.0.0.0:0` forwards to the original destination
# read with SO_ORIGINAL_DST, as Envoy does; inbound binds the source 127.0.0.6 as Envoy does,
# which istio's rules let through.
cat > "$WORK/sidecar.cfg" <<CFG
global
  maxconn 1000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend outbound
  bind 0.0.0.0:15001
  http-response set-header x-intercepted-by "sidecar outbound :15001"
  default_backend original_dst
backend original_dst
  server orig 0.0.0.0:0
frontend inbound
  bind 0.0.0.0:15006
  http-response set-header x-intercepted-by "sidecar inbound :15006"
  default_backend inbound_original_dst
backend inbound_original_dst
  server orig 0.0.0.0:0 source 127.0.0.6
CFG
in_pod setpriv --reuid=1337 --regid=1337 --clear-groups -- haproxy -db -f "$WORK/sidecar.cfg" >/dev/null 2>&1 &
for _ in $(seq 100); do in_pod ss -Hltn 'sport = :15006' | grep -q . && break; sleep 0.1; done

echo "== interceptor init (iptables mode, istio-init's defaults) in the pod"
in_pod "$BIN" init
echo "-- iptables -t nat -S in the pod:"
in_pod iptables -t nat -S | sed 's/^/   /'

echo "== outbound: the app (uid 1000) calls the peer; the sidecar answers on the way"
in_pod setpriv --reuid=1000 --regid=1000 --clear-groups -- curl -sS -m 5 -D - -o /dev/null http://10.123.0.3:8080/ \
  | grep -iE '^(HTTP|x-intercepted-by)' | sed 's/^/   /'
echo "== inbound: the peer calls the app; the pod's sidecar takes it on 15006 first"
in_peer curl -sS -m 5 -D - -o /dev/null http://10.123.0.2:8080/ | grep -iE '^(HTTP|x-intercepted-by)' | sed 's/^/   /'
echo "== the sidecar's own traffic (uid 1337) is not looped back"
in_pod setpriv --reuid=1337 --regid=1337 --clear-groups -- curl -sS -m 5 -D - -o /dev/null http://10.123.0.3:8080/ \
  | grep -iE '^(HTTP|x-intercepted-by)' | sed 's/^/   /'

echo "== interceptor cleanup"
in_pod "$BIN" cleanup
echo "   rules left in the pod's nat table: $(in_pod iptables -t nat -S | grep -c ISTIO || true)"

echo
echo "== the seeds' mirroring scenario: sniff --shadow on the node's veth to the webapp pod"
INTERCEPTOR=$BIN LAB=icpt-demo bash scripts/lab.sh demo 5
