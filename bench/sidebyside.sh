#!/usr/bin/env bash
# Two builds of observer-core side by side under wrk, with perf stat on the daemon.
#
#   bench/sidebyside.sh OLD_PYTHON NEW_PYTHON [ROUNDS]     # ROUNDS defaults to 3
#   CS="1 64" bench/sidebyside.sh ...                      # other concurrencies
#   NO_SINK=new ENDPOINT=/event bench/sidebyside.sh PY PY  # one build, with and without its sink
#   NEW_SINK_KEYS='inline_writes = false' bench/sidebyside.sh ...  # keys added to the new sink
#   BATCH=100 bench/sidebyside.sh ...                      # 100 events per request (NDJSON)
#
# Each PYTHON is a venv's interpreter whose observer_core is the build to measure
# (e.g. a copy of .venv whose editable finder points at a `git worktree` of the old
# commit). Per round and concurrency, the two alternate: the daemon (http source,
# jsonl sink, fsync never; NO_SINK=old or new leaves that side without the sink) on
# core 1 at nice -10, wrk -t1 on core 0 posting the ~300-byte event to ENDPOINT
# (default /events), 2 s warm-up, then 3 s measured while perf stat counts the
# daemon's task-clock and context switches (with BATCH=N, N events per request, NDJSON, to
# /events). Prints events/s, p99, CPU µs and context switches per request, and the lines
# in the file (warm-up included; "-" without a
# sink). Needs wrk, perf, curl and bc.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
fi
for py in "$1" "$2"; do
  [ -x "$py" ] || { echo "sidebyside: $py is not an executable Python interpreter" >&2; exit 2; }
done
absolute() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }  # keeps a venv's symlink
OLD=$(absolute "$1") NEW=$(absolute "$2") ROUNDS=${3:-3} PORT=${PORT:-3901}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
BATCH=${BATCH:-1}
"$NEW" -c "import sys; sys.path.insert(0, '$HERE'); from events import batch_body, event_body
open('$WORK/body', 'wb').write(batch_body($BATCH) if $BATCH > 1 else event_body())"
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "$( [ "$BATCH" -gt 1 ] && echo application/x-ndjson || echo application/json)"
local f = assert(io.open("$WORK/body", "rb"))
wrk.body = f:read("*a")
f:close()
LUA
ENDPOINT=${ENDPOINT:-/events}
for who in old new; do
  mkdir -p "$WORK/$who"
  printf '[observer]\ncycle_secs = 86400\nstate_dir = "state"\n[sources.http]\nport = %s\n' \
    "$PORT" > "$WORK/$who/observer.toml"
  if [ "${NO_SINK:-}" != "$who" ]; then
    printf '[sinks.ops]\nplugin = "jsonl"\npath = "ops.jsonl"\nfsync = "never"\n' >> "$WORK/$who/observer.toml"
    if [ "$who" = new ] && [ -n "${NEW_SINK_KEYS:-}" ]; then
      printf '%s\n' "$NEW_SINK_KEYS" >> "$WORK/$who/observer.toml"
    fi
  fi
done
for round in $(seq "$ROUNDS"); do
  for c in ${CS:-1 16 64}; do
    for who in old new; do
      py=$NEW; [ "$who" = old ] && py=$OLD
      dir=$WORK/$who
      rm -rf "$dir/ops.jsonl" "$dir/state"
      (cd "$dir" && exec taskset -c 1 nice -n -10 "$py" -m observer_core run --config observer.toml --log-level warning) &
      pid=$!
      up=no
      for _ in $(seq 100); do
        curl -sf "localhost:$PORT/health" > /dev/null && up=yes && break
        sleep 0.1
      done
      if [ "$up" = no ]; then
        echo "sidebyside: $who ($py) did not answer /health on port $PORT within 10 s" >&2
        kill "$pid" 2> /dev/null || true
        exit 1
      fi
      taskset -c 0 wrk -t1 "-c$c" -d2s -s "$WORK/post.lua" "http://127.0.0.1:$PORT$ENDPOINT" > /dev/null
      perf stat -e task-clock,context-switches -p "$pid" -x, -o "$WORK/perf.txt" &
      perf_pid=$!
      out=$(taskset -c 0 wrk -t1 "-c$c" -d3s --latency -s "$WORK/post.lua" "http://127.0.0.1:$PORT$ENDPOINT")
      kill -INT "$perf_pid"; wait "$perf_pid" || true
      kill -TERM "$pid"; wait "$pid" || true
      requests=$(awk '/requests in/ {print $1}' <<< "$out")
      rate=$(awk -v n="$BATCH" '/Requests\/sec/ {printf "%.0f", $2 * n}' <<< "$out")
      p99=$(awk '$1 == "99%" {print $2}' <<< "$out")
      task_ms=$(awk -F, '/task-clock/ {print $1}' "$WORK/perf.txt")
      switches=$(awk -F, '/context-switches/ {print $1}' "$WORK/perf.txt")
      lines=$(if [ -f "$dir/ops.jsonl" ]; then wc -l < "$dir/ops.jsonl"; else echo -; fi)
      # Deleted now, its dirty pages are dropped: written back, they would slow the next run.
      rm -f "$dir/ops.jsonl"
      printf '%s c=%s %s events/s=%s p99=%s cpu_us/request=%.1f switches/request=%.3f lines=%s\n' \
        "$round" "$c" "$who" "$rate" "$p99" "$(bc -l <<< "$task_ms * 1000 / $requests")" \
        "$(bc -l <<< "$switches / $requests")" "$lines"
    done
  done
done
