#!/usr/bin/env bash
# NATS with JetStream for the fleet tests (Debian's nats-server; the fleet
# it serves: docs/scaling.md, its benchmark: BENCHMARKS.md, "Fleet").
#
# The tests start their own nats-server per test (random ports, own store, so
# that they can restart it); CI needs only `install`. `start` gives a shared
# server for trying the examples or running the benchmark by hand.
#
# Usage: ci/nats-server.sh {install|start|stop|status}
#   install  apt-get install nats-server when it is missing (idempotent)
#   start    start it on 127.0.0.1 with JetStream in a temp store dir, wait
#            (<= NATS_START_TIMEOUT s) for /healthz on the monitor port,
#            print NATS_URL=nats://127.0.0.1:PORT
#   stop     stop the server started by `start` and remove its store
#   status   exit 0 and print NATS_URL if that server is up, else exit 1
#
# Environment:
#   NATS_PORT            client port   (default 14222)
#   NATS_MONITOR_PORT    monitor port  (default 18222)
#   NATS_START_TIMEOUT   seconds       (default 20)
#   NATS_RUN_DIR         pid, log and store (default ${TMPDIR:-/tmp}/observer-nats-$NATS_PORT)
set -euo pipefail

NATS_PORT=${NATS_PORT:-14222}
NATS_MONITOR_PORT=${NATS_MONITOR_PORT:-18222}
NATS_START_TIMEOUT=${NATS_START_TIMEOUT:-20}
NATS_RUN_DIR=${NATS_RUN_DIR:-${TMPDIR:-/tmp}/observer-nats-$NATS_PORT}

PID_FILE=$NATS_RUN_DIR/nats-server.pid
LOG_FILE=$NATS_RUN_DIR/nats-server.log
STORE_DIR=$NATS_RUN_DIR/store
URL=nats://127.0.0.1:$NATS_PORT
HEALTHZ=http://127.0.0.1:$NATS_MONITOR_PORT/healthz

log() { printf 'nats-server: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=ci/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

run_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $*"; fi
}

cmd_install() {
    if command -v nats-server >/dev/null; then
        log "already installed: $(nats-server --version)"
        return 0
    fi
    command -v apt-get >/dev/null || die "nats-server is missing and there is no apt-get"
    log "installing nats-server (apt)"
    export DEBIAN_FRONTEND=noninteractive
    if ! run_root apt-get install -y -qq --no-install-recommends nats-server; then
        run_root apt-get update -qq
        run_root apt-get install -y -qq --no-install-recommends nats-server
    fi
    command -v nats-server >/dev/null || die "nats-server not found after install"
    log "installed: $(nats-server --version)"
}

# pid of the server we started, or failure.
server_pid() { pid_of "$PID_FILE" 'nats-server'; }

ready() {
    if command -v curl >/dev/null; then
        curl -sf --max-time 2 "$HEALTHZ" >/dev/null 2>&1
    else
        python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
            "$HEALTHZ" >/dev/null 2>&1
    fi
}

cmd_start() {
    command -v nats-server >/dev/null || die "nats-server is not installed; run: $0 install"
    if server_pid >/dev/null; then
        ready || die "pid $(server_pid) exists but $HEALTHZ does not answer; run: $0 stop"
        log "already running (pid $(server_pid))"
        echo "NATS_URL=$URL"
        return 0
    fi
    ready && die "port $NATS_MONITOR_PORT already serves something not started by this script"
    mkdir -p "$STORE_DIR"
    : >"$LOG_FILE"
    setsid nohup nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
        -js -sd "$STORE_DIR" </dev/null >>"$LOG_FILE" 2>&1 &
    local pid=$! deadline=$((SECONDS + NATS_START_TIMEOUT))
    echo "$pid" >"$PID_FILE"
    until ready; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            log "exited before becoming ready; log tail ($LOG_FILE):"
            tail -n 40 "$LOG_FILE" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "not ready after ${NATS_START_TIMEOUT}s; log tail ($LOG_FILE):"
            tail -n 40 "$LOG_FILE" >&2
            cmd_stop || true
            exit 1
        fi
        sleep 0.1
    done
    log "ready (pid $pid, JetStream store $STORE_DIR, log $LOG_FILE)"
    echo "NATS_URL=$URL"
}

cmd_stop() {
    stop_pid "$PID_FILE" 'nats-server'
    rm -rf "$STORE_DIR"
}

cmd_status() {
    if server_pid >/dev/null && ready; then
        echo "NATS_URL=$URL"
    else
        log "not running"
        return 1
    fi
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
esac
