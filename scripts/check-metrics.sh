#!/usr/bin/env bash
# Lints a live node's /metrics with promtool (Debian's `prometheus` package): two gossipd
# processes on loopback that link to each other, so the per-peer series are there too, then
# `promtool check metrics` on each node's exposition, then a real Prometheus scrapes one of
# them and its query API must return the node's series (CHECK_SCRAPE=0 skips that). Used by
# .ci/run.
#   scripts/check-metrics.sh [path/to/gossipd]      (default: target/release/gossipd)
set -euo pipefail
cd "$(dirname "$0")/.."
gossipd=${1:-target/release/gossipd}
command -v promtool >/dev/null || { echo "promtool not found: apt-get install prometheus"; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# A node on kernel-chosen ports; its HTTP listener on a free port picked the same way. Prints
# "BASE HTTP".
start() {
  local name=$1; shift
  local http
  http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$gossipd" --name 127.0.0.1 --bind 127.0.0.1 --base-port 0 --data-dir "$work/$name" \
    --http "127.0.0.1:$http" --probe-interval-ms 50 --reprobe 1 "$@" \
    > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
  for _ in $(seq 100); do
    if grep -q "base port" "$work/$name.out" 2>/dev/null; then
      echo "$(sed -n 's/.*base port \([0-9]*\).*/\1/p' "$work/$name.out") $http"
      return
    fi
    sleep 0.1
  done
  echo "node $name did not start:" >&2; cat "$work/$name.err" >&2; exit 1
}

read -r base_a http_a < <(start a)
read -r base_b http_b < <(start b --peer "127.0.0.1:$base_a")
# Wait until A reports its link to B, so every per-peer series has a sample.
for _ in $(seq 200); do
  if curl -sf "http://127.0.0.1:$http_a/metrics" | grep -q "gossip_peer_link_up{peer=\"127.0.0.1:$base_b\"} 1"; then
    break
  fi
  sleep 0.1
done
for http in "$http_a" "$http_b"; do
  curl -sf "http://127.0.0.1:$http/metrics" > "$work/metrics.txt"
  grep -q "gossip_peer_rtt_seconds" "$work/metrics.txt" || { echo "no per-peer RTT on :$http"; exit 1; }
  promtool check metrics < "$work/metrics.txt"
  echo "promtool: the exposition of 127.0.0.1:$http passes ($(grep -c '^# TYPE' "$work/metrics.txt") metrics)"
done

# A real Prometheus scrapes node A, and its query API returns A's series.
if [ "${CHECK_SCRAPE:-1}" = 1 ]; then
  command -v prometheus >/dev/null || { echo "prometheus not found: apt-get install prometheus"; exit 1; }
  prom_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: gossip
    static_configs:
      - targets: ["127.0.0.1:$http_a"]
YML
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" > "$work/prometheus.log" 2>&1 &
  pids+=($!)
  query="http://127.0.0.1:$prom_port/api/v1/query?query=gossip_build_info"
  for _ in $(seq 300); do
    if curl -sf "$query" 2>/dev/null | grep -q '"__name__":"gossip_build_info"'; then
      echo "prometheus: scraped 127.0.0.1:$http_a; its query API returns gossip_build_info and:"
      curl -sf "http://127.0.0.1:$prom_port/api/v1/query?query=gossip_peer_link_up" | grep -q "127.0.0.1:$base_b" \
        || { echo "prometheus has no gossip_peer_link_up for B"; exit 1; }
      echo "  gossip_peer_link_up{peer=\"127.0.0.1:$base_b\"}"
      exit 0
    fi
    sleep 0.2
  done
  echo "prometheus never returned the node's series:"; tail -20 "$work/prometheus.log"; exit 1
fi
