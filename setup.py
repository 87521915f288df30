"""Build hook: compile the ingest path with mypyc (the rest is in pyproject.toml).

The per-request code of the listeners and of the group commit (`observer_core.http.
_connection`, `_incoming`, `_framing` and `_shared`, `observer_core._engine.dispatch`) is
compiled to C by mypyc, which turns their attribute reads and method calls into direct
ones and their ``Final`` names into C statics: 30 % fewer instructions per ``POST /event``
than interpreted (BENCHMARKS.md, "Round four" and "Round five"). The modules stay plain,
type-checked Python, shipped beside the compiled ones:

- ``OBSERVER_CORE_PURE=1`` at install time builds nothing and runs them interpreted;
- without a C compiler (or Python's headers), the build goes on without them, with a
  warning (the extensions are optional), and the same code runs interpreted.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

COMPILED = [
    "observer_core/http/_connection.py",
    "observer_core/http/_framing.py",
    "observer_core/http/_incoming.py",
    "observer_core/http/_shared.py",
    "observer_core/_engine/dispatch.py",
]


def compiled_modules() -> list[Extension]:
    """The extensions mypyc builds, or none when ``OBSERVER_CORE_PURE`` is set."""
    if os.environ.get("OBSERVER_CORE_PURE", "") not in ("", "0"):
        return []
    from mypyc.build import mypycify

    # The build sees only this source: not the project's mypy settings (mypy --strict runs
    # in the tests), nor the third-party packages, which pip installs after the build (their
    # types are Any here: they were classes mypyc could not compile into these anyway).
    # group_name keeps mypyc's shared runtime module inside the package.
    # (observer_core/compiled.py lists these modules too, to tell whether they are compiled.)
    options = ["--config-file=", "--no-site-packages", "--ignore-missing-imports"]
    options.append("--follow-imports=silent")  # check the compiled modules only
    extensions = mypycify(
        [*options, *COMPILED], group_name="observer_core._compiled", opt_level="3"
    )
    for extension in extensions:
        extension.optional = True  # no compiler: the pure-Python modules are used
    return list(extensions)


setup(ext_modules=compiled_modules())
