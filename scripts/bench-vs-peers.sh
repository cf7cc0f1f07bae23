#!/usr/bin/env bash
# botfleet beside its peers on one private Redis, round after round, and the ratios:
#
#   scripts/bench-vs-peers.sh locks|queue|queue-http [ROUNDS]      (default: 3 rounds)
#
# Starts a redis-server on a free loopback port (never 6379) with persistence off, in a
# temporary directory removed at the end. Each round runs `botfleet bench locks|queue` (or
# `bench queue --via http` for queue-http), then the peers' `run.sh locks|queue` (the
# directory in PEERS_DIR, default ../shared/peers) on that server, one right after the
# other, so that both sides see the same machine. The machines this runs on are shared and
# noisy: compare the ratios of one round, not absolute figures across rounds.
#
# Prints every JSON line as it comes, then a table: per round and scenario, botfleet's
# figure, the best peer's, and the ratio (pairs_per_s for locks; process_per_s and
# enqueue_per_s for the queue). botfleet's `50-tasks-unfenced-commands` (rslock's commands
# through botfleet's storage) is set beside rslock's `50-tasks-distinct-keys`; its
# `one-task`, and the two forms of `one-task-bare-socket` (the same scripts, then plain
# commands, over a bare socket), beside the round-trip floor of the same round.
#
# N sets the workload's size on both sides (default 20000, the peers' own default): the lock
# pairs (`bench locks --pairs N`; `8-tasks-one-key` takes N/10 of them on each side) or the
# queue's tasks (`bench queue --tasks N`). The short scenarios of the default size last a
# fraction of a second, so a slow start weighs on them; a larger N takes that out.
#
# BENCH_ARGS adds arguments to botfleet's side only (split on spaces), e.g.
# BENCH_ARGS="--lock-connections 0" to send the lock scripts through the pool.
#
# PLACE says where the processes run (`taskset`):
#   shared  (default) where the scheduler puts them;
#   same    the server and every client on CPU 0: no wake-up crosses CPUs, so the figures
#           are the CPU each side spends per pair;
#   split   the server on CPU 0, the clients on the other CPUs: every reply wakes a client
#           on another CPU, and the two sides run in parallel.
# On a virtual machine whose idle CPUs halt, a wake-up on another CPU can cost more than
# the work of a round trip, and the scheduler moves the processes between these cases
# during a run: `same` and `split` take that out of the comparison.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
what=${1:-}
rounds=${2:-3}
case "$what" in
  locks | queue | queue-http) ;;
  *)
    echo "usage: $0 locks|queue|queue-http [ROUNDS]" >&2
    exit 2
    ;;
esac
case "$rounds" in
  '' | *[!0-9]* | 0)
    echo "$0: ROUNDS: expected a positive integer, got \"$rounds\"" >&2
    exit 2
    ;;
esac
n=${N:-20000}
case "$n" in
  '' | *[!0-9]* | 0*)
    echo "$0: N: expected a positive integer (the workload's size), got \"$n\"" >&2
    exit 2
    ;;
esac
place=${PLACE:-shared}
server_cpus= client_cpus=
case "$place" in
  shared) ;;
  same | split)
    command -v taskset >/dev/null || {
      echo "$0: PLACE=$place needs taskset (util-linux)" >&2
      exit 2
    }
    cpus=$(nproc)
    if [ "$place" = same ]; then
      server_cpus=0 client_cpus=0
    elif [ "$cpus" -lt 2 ]; then
      echo "$0: PLACE=split needs at least 2 CPUs, this machine has $cpus" >&2
      exit 2
    else
      server_cpus=0 client_cpus=1-$((cpus - 1))
    fi
    ;;
  *)
    echo "$0: PLACE: expected shared, same or split, got \"$place\"" >&2
    exit 2
    ;;
esac
# Runs a client where PLACE puts clients.
client() {
  if [ -n "$client_cpus" ]; then taskset -c "$client_cpus" "$@"; else "$@"; fi
}
peers=${PEERS_DIR:-../shared/peers}
[ -x "$peers/run.sh" ] || [ -f "$peers/run.sh" ] || {
  echo "$0: no run.sh in $peers (set PEERS_DIR)" >&2
  exit 2
}
cargo build --release --quiet --bin botfleet
bin=target/release/botfleet

work=$(mktemp -d)
port=
cleanup() {
  [ -n "$port" ] && redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
while :; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  [ "$port" != 6379 ] && break
done
server=(redis-server)
[ -n "$server_cpus" ] && server=(taskset -c "$server_cpus" redis-server)
"${server[@]}" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
url=redis://127.0.0.1:$port

lines=$work/lines
read -r -a extra <<<"${BENCH_ARGS:-}"
for round in $(seq 1 "$rounds"); do
  case "$what" in
    locks) client "$bin" bench locks --redis "$url" --pairs "$n" "${extra[@]}" ;;
    queue) client "$bin" bench queue --redis "$url" --tasks "$n" "${extra[@]}" ;;
    queue-http) client "$bin" bench queue --via http --redis "$url" --tasks "$n" "${extra[@]}" ;;
  esac | sed "s/^/$round /" | tee -a "$lines"
  redis-cli -p "$port" flushall >/dev/null
  REDIS_URL=$url N=$n client bash "$peers/run.sh" "${what%-http}" | grep '^{' | sed "s/^/$round /" |
    tee -a "$lines"
  redis-cli -p "$port" flushall >/dev/null
done

python3 - "$lines" "$what" <<'EOF'
import json, sys
path, what = sys.argv[1], sys.argv[2]
figures = ["pairs_per_s"] if what == "locks" else ["process_per_s", "enqueue_per_s"]
rows = {}
for line in open(path):
    round_, text = line.split(" ", 1)
    d = json.loads(text)
    if "scenario" not in d:
        continue
    side = "botfleet" if d.get("peer") == "botfleet" else "peer"
    for f in figures:
        if f in d:
            # Scenarios with several forms (one line each) keep one row per form.
            scenario = d["scenario"] + (f" {d['form']}" if "form" in d else "")
            key = (int(round_), scenario, f)
            best = rows.setdefault(key, {"botfleet": None, "peer": None, "peer_name": ""})
            if side == "botfleet":
                best["botfleet"] = d[f]
            elif best["peer"] is None or d[f] > best["peer"]:
                best["peer"], best["peer_name"] = d[f], d.get("peer", "")
# botfleet's client with rslock's own commands, beside rslock's figure for the same workload.
for (r, scenario, f), v in list(rows.items()):
    if scenario == "50-tasks-unfenced-commands":
        peer = rows.get((r, "50-tasks-distinct-keys", f), {})
        v["peer"], v["peer_name"] = peer.get("peer"), peer.get("peer_name", "")
# botfleet's one-task beside the round-trip floor (redis-benchmark, same round).
for (r, scenario, f), v in list(rows.items()):
    if scenario == "round-trip-floor" and v["peer"] is not None:
        for mine, label in [
            ("one-task", "one-task / floor"),
            ("one-task-bare-socket fenced-scripts", "socket scripts / floor"),
            ("one-task-bare-socket plain-commands", "socket plain / floor"),
        ]:
            rows[(r, label, f)] = {
                "botfleet": rows.get((r, mine, f), {}).get("botfleet"),
                "peer": v["peer"], "peer_name": v["peer_name"],
            }
print()
print(f"{'round':>5}  {'scenario':<26} {'figure':<14} {'botfleet':>10} {'best peer':>10}  ratio  peer")
for (r, scenario, f), v in sorted(rows.items()):
    if v["botfleet"] is None or v["peer"] is None:
        continue
    ratio = v["botfleet"] / v["peer"] if v["peer"] else float("inf")
    print(f"{r:>5}  {scenario:<26} {f:<14} {v['botfleet']:>10.0f} {v['peer']:>10.0f}  {ratio:5.2f}  {v['peer_name']}")
EOF
