"""Shared test configuration. The fixtures come from observer_core.testing (pytest11)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def llama_url() -> str:
    """The real model server's URL (tests marked ``llm``).

    Locally such tests are skipped when LLAMA_URL is unset; in CI
    (OBSERVER_REQUIRE_LLM=1) a missing server fails them, never a silent skip.
    """
    url = os.environ.get("LLAMA_URL")
    if url:
        return url
    if os.environ.get("OBSERVER_REQUIRE_LLM") == "1":
        pytest.fail("OBSERVER_REQUIRE_LLM=1 but LLAMA_URL is not set")
    pytest.skip("set LLAMA_URL to run tests against a real model (see ci/llama-server.sh)")
