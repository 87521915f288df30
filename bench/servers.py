"""The two programs under test: the peer (observer.ts on Bun) and observer-core."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from common import BENCH_DIR, REPO, Server, free_port, log, python

PEER_SOURCE = REPO.parent / "shared" / "reference" / "observer.ts"
PEER_PREFIX = BENCH_DIR / ".peer"
PEER_BUN = PEER_PREFIX / "node_modules" / ".bin" / "bun"
PEER_OPS = Path("data/_observer/ops.jsonl")
CORE_OPS = Path("ops.jsonl")


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status":"ok","service":"bench-gateway"}'
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@contextmanager
def gateway() -> Iterator[str]:
    """The gateway the peer checks at start-up: answers GET /health, nothing else."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def ensure_bun() -> Path:
    """Install the ``bun`` npm package into bench/.peer once (npm, the ordinary client)."""
    if not PEER_BUN.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is needed to install the peer's runtime (the npm package bun)")
        log(f"installing bun into {PEER_PREFIX} with npm")
        PEER_PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--prefix", str(PEER_PREFIX), "bun"], check=True)
    return PEER_BUN


def bun_version() -> str:
    done = subprocess.run([str(ensure_bun()), "--version"], capture_output=True, text=True)
    return done.stdout.strip()


def start_peer(workdir: Path, gateway_url: str) -> Server:
    """observer.ts on Bun, its working directory (and so its ops.jsonl) in ``workdir``."""
    port = free_port()
    return Server(
        "peer",
        [str(ensure_bun()), "run", str(PEER_SOURCE)],
        cwd=workdir,
        port=port,
        env={
            "GATEWAY_URL": gateway_url,
            "OBSERVER_PORT": str(port),
            "OBSERVER_CYCLE": "86400",
            "LAKEHOUSE_URL": "http://127.0.0.1:9",
            "LH_LLM_TEAM_URL": "http://127.0.0.1:9",
            "OVERSEER_CORRECTIONS_PATH": str(workdir / "no-corrections.jsonl"),
        },
    )


def core_config(port: int, fsync: str, *, cycle_secs: float = 86400, extra: str = "") -> str:
    """An observer-core config: the http source and one jsonl sink (ops.jsonl)."""
    return f"""\
[observer]
cycle_secs = {cycle_secs}
state_dir = "state"

[sources.http]
port = {port}

[sinks.ops]
plugin = "jsonl"
path = "{CORE_OPS}"
fsync = "{fsync}"
{extra}"""


def start_core(workdir: Path, fsync: str, *, cycle_secs: float = 86400, extra: str = "") -> Server:
    """``observer-core run`` from the project's venv, with a generated config in ``workdir``."""
    port = free_port()
    config = workdir / "observer.toml"
    config.write_text(core_config(port, fsync, cycle_secs=cycle_secs, extra=extra))
    argv = [*core_command(), "run", "--config", str(config), "--log-level", "warning"]
    return Server(f"observer-core ({fsync})", argv, cwd=workdir, port=port)


def core_command() -> list[str]:
    """The ``observer-core`` script beside the venv's python (else ``python -m observer_core``)."""
    script = Path(python()).parent / "observer-core"
    return [str(script)] if script.exists() else [python(), "-m", "observer_core"]


SERVERS = ("peer", "core-never", "core-batch")
"""The ingest comparison's contestants: the peer and observer-core with each fsync mode."""


VARIANTS = {"core-thread": ("never", "inline_writes = false\n")}
"""Contestants beyond SERVERS (``--servers``), as (fsync, extra sink keys): ``core-thread`` is
``core-never`` with every write on the sink's writer thread, as before issue 24."""


def start(name: str, workdir: Path, gateway_url: str) -> tuple[Server, Path]:
    """Start one of SERVERS or VARIANTS; return it and the JSONL file its acknowledged events
    go to."""
    if name == "peer":
        return start_peer(workdir, gateway_url), workdir / PEER_OPS
    fsync, extra = VARIANTS.get(name, (name.removeprefix("core-"), ""))
    return start_core(workdir, fsync, extra=extra), workdir / CORE_OPS
