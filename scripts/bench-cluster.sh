#!/usr/bin/env bash
# The queue benchmark on a local Redis Cluster of 1, 2 and 3 masters (no replicas), each
# started here on free loopback ports in a temporary directory and killed at the end:
#
#   scripts/bench-cluster.sh [TASKS] [QUEUES]      (defaults: 20000 tasks, 12 queues)
#
# BENCH_PROFILE=debug uses the debug build instead of the release one (quicker to build, far
# slower to run: only the split between masters and the trend across M mean anything then).
#
# For each cluster it resets the masters' statistics, runs
# `botfleet bench queue --redis redis-cluster://... --tasks TASKS --queues QUEUES`, and prints
# the benchmark's JSON lines followed by one line with each master's share of the commands
# (from INFO commandstats; the harness's own INFO/CONFIG/CLUSTER/PING calls left out) and
# the largest deviation from 1/M, and the CPU time (user + system, in seconds) that the
# masters together (since they started) and the benchmark client spent. Never touches port 6379.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
tasks=${1:-20000}
queues=${2:-12}
if [ "${BENCH_PROFILE:-release}" = debug ]; then
  bin=target/debug/botfleet
  cargo build --quiet --bin botfleet
else
  bin=target/release/botfleet
  cargo build --release --quiet --bin botfleet
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A free loopback port (not 6379), found by the kernel.
free_port() {
  local port
  while :; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    [ "$port" != 6379 ] && { echo "$port"; return; }
  done
}

# Waits (bounded) until `redis-cli -p PORT ARGS...` prints a line matching PATTERN.
wait_for() {
  local port=$1 pattern=$2
  shift 2
  for _ in $(seq 1 600); do
    redis-cli -p "$port" "$@" 2>/dev/null | grep -q "$pattern" && return 0
    sleep 0.05
  done
  echo "bench-cluster: port $port never matched $pattern" >&2
  return 1
}

for masters in 1 2 3; do
  ports=()
  buses=()
  for m in $(seq 1 "$masters"); do
    port=$(free_port)
    bus=$(free_port)
    dir="$work/$masters-$m"
    mkdir -p "$dir"
    # Started from a subshell, so that it is no job of this shell (no "Killed" notices).
    pid=$(
      redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly no \
        --cluster-enabled yes --cluster-port "$bus" --cluster-config-file nodes.conf \
        --cluster-announce-ip 127.0.0.1 --logfile "$dir/redis.log" >/dev/null 2>&1 &
      echo $!
    )
    pids+=("$pid")
    ports+=("$port")
    buses+=("$bus")
    wait_for "$port" PONG PING
  done
  # Even slot ranges, then every node meets the first.
  per=$((16384 / masters))
  for i in $(seq 0 $((masters - 1))); do
    first=$((i * per))
    last=$(((i + 1) * per - 1))
    [ "$i" -eq $((masters - 1)) ] && last=16383
    redis-cli -p "${ports[$i]}" cluster addslotsrange "$first" "$last" >/dev/null
  done
  for port in "${ports[@]:1}"; do
    redis-cli -p "$port" cluster meet 127.0.0.1 "${ports[0]}" "${buses[0]}" >/dev/null
  done
  for port in "${ports[@]}"; do
    wait_for "$port" "cluster_known_nodes:$masters" cluster info
    wait_for "$port" "cluster_state:ok" cluster info
  done
  for port in "${ports[@]}"; do redis-cli -p "$port" config resetstat >/dev/null; done

  url="redis-cluster://127.0.0.1:${ports[0]}"
  # Run through python only to read the client's CPU time (user + system) when it exits.
  python3 -c '
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write("%.2f" % (r.ru_utime + r.ru_stime))
sys.exit(code)' "$work/client-cpu" \
    "$bin" bench queue --redis "$url" --tasks "$tasks" --queues "$queues" |
    sed "s/^{/{\"masters\":$masters,/"

  counts=()
  cpu=0
  for port in "${ports[@]}"; do
    cpu=$(redis-cli -p "$port" info cpu |
      awk -F: -v sum="$cpu" '/^used_cpu_(sys|user):/ { sum += $2 } END { print sum }')
    counts+=("$(redis-cli -p "$port" info commandstats |
      awk -F'[:,=]' '/^cmdstat_/ && $1 !~ /cmdstat_(info|config|cluster|ping|command|hello|client|select|auth|readonly)$/ { n += $3 } END { print n + 0 }')")
  done
  python3 - "$masters" "$cpu" "$(cat "$work/client-cpu")" "${counts[@]}" <<'EOF'
import json, sys
masters = int(sys.argv[1])
redis_cpu, client_cpu = float(sys.argv[2]), float(sys.argv[3])
counts = [int(c) for c in sys.argv[4:]]
total = sum(counts) or 1
shares = [c / total for c in counts]
print(json.dumps({
    "masters": masters,
    "commands_per_master": counts,
    "share_per_master": [round(s, 4) for s in shares],
    "max_deviation_from_1_over_m": round(max(abs(s * masters - 1) for s in shares), 4),
    "redis_cpu_s": round(redis_cpu, 2),
    "client_cpu_s": client_cpu,
}))
EOF
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  pids=()
done
