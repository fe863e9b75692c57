# Sourced by the scripts that run real gossipd processes on loopback (check-metrics.sh,
# check-map.sh): starting a node on kernel-chosen ports with its HTTP listener, and stopping
# every node started when the script exits. Needs $gossipd (the binary) and $work (a
# temporary directory the caller removes).

node_pids=()

# A free loopback TCP port, as the kernel picks one.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_node NAME [gossipd flags...]: starts a node named 127.0.0.1 with fast probes and an
# HTTP listener; sets NODE_BASE (its base port), NODE_HTTP (its HTTP port) and NODE_PID.
# Run it in the calling shell (not in $(...)): the pid must reach stop_nodes.
start_node() {
  local name=$1; shift
  NODE_HTTP=$(free_port)
  "$gossipd" --name 127.0.0.1 --bind 127.0.0.1 --base-port 0 --data-dir "$work/$name" \
    --http "127.0.0.1:$NODE_HTTP" --probe-interval-ms 50 --reprobe 1 "$@" \
    > "$work/$name.out" 2> "$work/$name.err" &
  NODE_PID=$!
  node_pids+=("$NODE_PID")
  for _ in $(seq 100); do
    if grep -q "base port" "$work/$name.out" 2>/dev/null; then
      NODE_BASE=$(sed -n 's/.*base port \([0-9]*\).*/\1/p' "$work/$name.out" | head -1)
      return 0
    fi
    sleep 0.1
  done
  echo "node $name did not start:" >&2
  cat "$work/$name.err" >&2
  return 1
}

# Stops every node started (and anything else whose pid was added to node_pids).
stop_nodes() {
  for p in "${node_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
