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
. scripts/nodes.sh
cleanup() { stop_nodes; rm -rf "$work"; }
trap cleanup EXIT

start_node a
base_a=$NODE_BASE http_a=$NODE_HTTP
start_node b --peer "127.0.0.1:$base_a"
base_b=$NODE_BASE http_b=$NODE_HTTP
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
  prom_port=$(free_port)
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
  node_pids+=($!)
  query="http://127.0.0.1:$prom_port/api/v1/query?query=gossip_build_info"
  for _ in $(seq 300); do
    if curl -sf "$query" 2>/dev/null | grep -q '"__name__":"gossip_build_info"'; then
      echo "prometheus: scraped 127.0.0.1:$http_a; its query API returns gossip_build_info and:"
      curl -sf "http://127.0.0.1:$prom_port/api/v1/query?query=gossip_peer_link_up" | grep -q "127.0.0.1:$base_b" \
        || { echo "prometheus has no gossip_peer_link_up for B"; exit 1; }
      echo "  gossip_peer_link_up{peer=\"127.0.0.1:$base_b\"}"
      # A histogram too: the Noise handshake of A's link to B.
      curl -sf "http://127.0.0.1:$prom_port/api/v1/query?query=gossip_handshake_seconds_count" | grep -q '"side":"server"' \
        || { echo "prometheus has no gossip_handshake_seconds_count{side=\"server\"}"; exit 1; }
      echo "  gossip_handshake_seconds_count{side=\"server\"}"
      exit 0
    fi
    sleep 0.2
  done
  echo "prometheus never returned the node's series:"; tail -20 "$work/prometheus.log"; exit 1
fi
