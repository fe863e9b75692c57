#!/usr/bin/env bash
# The live federation map in a real browser: three gossipd processes on loopback (A – B – C by
# their peers), headless Chromium (Debian's package) loads A's map through playwright-core and
# must draw three servers and two tree edges; then C is killed (kill -9) and the page must mark
# it dead within seconds. Screenshots (1280×800, a phone, after the kill) are kept under
# target/map/ as CI artifacts. Used by .ci/run.
#   scripts/check-map.sh [path/to/gossipd]      (default: target/release/gossipd)
set -euo pipefail
cd "$(dirname "$0")/.."
gossipd=${1:-target/release/gossipd}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
[ -x "$CHROMIUM" ] || { echo "chromium not found at $CHROMIUM: apt-get install chromium"; exit 1; }
command -v node >/dev/null || { echo "node not found: this check needs Node.js"; exit 1; }
[ -d scripts/browser/node_modules/playwright-core ] || npm ci --prefix scripts/browser --no-audit --no-fund --silent
out=target/map
mkdir -p "$out"
work=$(mktemp -d)
. scripts/nodes.sh
cleanup() { stop_nodes; rm -rf "$work"; }
trap cleanup EXIT

# A dead timeout of 2 s: the page must show the death within a few seconds of it.
start_node a --dead-after 2
base_a=$NODE_BASE http_a=$NODE_HTTP
start_node b --dead-after 2 --peer "127.0.0.1:$base_a"
base_b=$NODE_BASE
start_node c --dead-after 2 --peer "127.0.0.1:$base_b"
base_c=$NODE_BASE pid_c=$NODE_PID
# The browser check kills C itself; its shell job is let go so bash does not report it.
disown "$pid_c"
echo "map: nodes on 127.0.0.1:$base_a, :$base_b, :$base_c; A's map at http://127.0.0.1:$http_a/"
node scripts/browser/map-test.mjs "http://127.0.0.1:$http_a/" 3 2 "$pid_c" "127.0.0.1:$base_c" "$out"
echo "map: screenshots in $out/"
