# Shared by ci/llama-server.sh and ci/nats-server.sh: a background server
# remembered by a pid file. Source it after defining log().

# pid_of PID_FILE PATTERN: print the pid if that process runs and its command
# line matches PATTERN (a guard against pid reuse); fail otherwise.
pid_of() {
    local pid_file=$1 pattern=$2 pid
    [[ -f $pid_file ]] || return 1
    pid=$(cat "$pid_file" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern" || return 1
    echo "$pid"
}

# stop_pid PID_FILE PATTERN: SIGTERM, wait up to 10 s, then SIGKILL; remove the pid file.
stop_pid() {
    local pid_file=$1 pattern=$2 pid i
    if ! pid=$(pid_of "$pid_file" "$pattern"); then
        rm -f "$pid_file"
        log "not running"
        return 0
    fi
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not exit after SIGTERM; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
    log "stopped (pid $pid)"
}
