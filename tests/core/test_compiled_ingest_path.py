"""The ingest path compiled by mypyc (setup.py), and the same code run interpreted.

The compiled modules are what an install runs (and what the rest of the suite tests);
the pure-Python ones are what runs where no compiler was found, or with
``OBSERVER_CORE_PURE=1`` at install time: a daemon on them is tested here too."""

from __future__ import annotations

import ast
import json
import os
import socket
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from observer_core.compiled import INGEST_PATH, MODULES

PACKAGE = Path(__file__).resolve().parents[2] / "observer_core"
EVENT = {"tool": "search", "input_summary": "q", "outcome": "success"}

# Run first in the daemon (PYTHONPATH): the compiled modules from their .py files.
SITECUSTOMIZE = (
    f"PURE = {[module.__name__ for module in MODULES]!r}\n"
    + """
import importlib.abc, importlib.util, os, pathlib, sys


class PureIngestPath(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PURE:
            return None
        for folder in path or ():
            source = pathlib.Path(folder) / (name.rpartition(".")[2] + ".py")
            if source.exists():
                with open(os.environ["PURE_LOADED"], "a") as loaded:
                    loaded.write(f"{source}\\n")
                return importlib.util.spec_from_file_location(name, source)
        return None


sys.meta_path.insert(0, PureIngestPath())
"""
)


def test_setup_compiles_the_modules_that_compiled_py_lists():
    """setup.py and observer_core/compiled.py each list them (the build can't import the
    package): the startup log's "compiled" must mean what the build compiled."""
    tree = ast.parse((PACKAGE.parent / "setup.py").read_text(encoding="utf-8"))
    [listed] = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(target, ast.Name) and target.id == "COMPILED" for target in node.targets)
    ]
    built = sorted(path.removesuffix(".py").replace("/", ".") for path in ast.literal_eval(listed))
    assert built == sorted(module.__name__ for module in MODULES)


@pytest.mark.skipif(
    os.environ.get("OBSERVER_CORE_PURE", "") not in ("", "0"), reason="installed pure"
)
def test_the_installed_ingest_path_is_compiled_from_the_current_source():
    assert INGEST_PATH == "compiled", (
        "installed interpreted (no C compiler, or OBSERVER_CORE_PURE=1 at install): "
        "install with a compiler, or set OBSERVER_CORE_PURE=1 to skip this test"
    )
    for module in MODULES:
        origin = module.__spec__.origin if module.__spec__ else None
        assert origin is not None and origin.endswith(".so"), module.__name__
        # (mypyc's origin names the package twice: the file is found by its name)
        [built] = PACKAGE.rglob(Path(origin).name)
        folder = built.parent
        newest = max(folder.glob("*.py"), key=lambda path: path.stat().st_mtime)
        assert built.stat().st_mtime >= newest.stat().st_mtime, (
            f"{built.name} is older than {newest.name}: run bash scripts/setup to rebuild it"
        )


def test_a_daemon_on_the_interpreted_ingest_path_serves_and_writes(observer_daemon, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    loaded = tmp_path / "loaded.txt"
    env = {"PYTHONPATH": os.pathsep.join([str(site), *sys.path]), "PURE_LOADED": str(loaded)}
    daemon = observer_daemon.start(
        textwrap.dedent(
            """
            [sources.http]
            plugin = "http"
            port = {port}
            [sinks.ops]
            plugin = "jsonl"
            path = "ops.jsonl"
            """
        ),
        env=env,
    )
    assert sorted(Path(line).name for line in loaded.read_text().split()) == sorted(
        module.__name__.rpartition(".")[2] + ".py" for module in MODULES
    )
    assert "(ingest path interpreted)" in daemon.logs()
    with httpx.Client(base_url=daemon.url, timeout=10) as client:  # one kept connection
        for number in range(3):
            reply = client.post("/event", json={**EVENT, "input_summary": f"q{number}"})
            assert reply.status_code == 200, reply.text
            assert reply.json()["accepted"] is True
        assert client.post("/event", content=b"{").status_code == 400
    body = json.dumps({**EVENT, "input_summary": "piped"}).encode()
    request = b"POST /event HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    request += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(request * 2)  # pipelined: both answered, in order
        answers = b""
        while answers.count(b"HTTP/1.1 200") < 2:
            chunk = sock.recv(65536)
            assert chunk, answers
            answers += chunk
    assert daemon.stop() == 0
    rows = [json.loads(line) for line in (daemon.directory / "ops.jsonl").read_text().splitlines()]
    assert [row["input_summary"] for row in rows] == ["q0", "q1", "q2", "piped", "piped"]
