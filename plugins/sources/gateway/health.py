"""Watching ``GET {url}/health``: a 2xx is healthy; any other answer, or none, is not.

The state goes to ``/health`` ``checks`` and ``/stats`` through ``ctx.set_check``,
with ``since`` the moment it last changed. A gateway that goes down is logged
once, then probed again after 1 s, 2 s, 4 s... up to every 60 s; a healthy one
is probed every 30 s. Nothing here ever stops the daemon.
"""

from __future__ import annotations

import anyio
import httpx

from observer_core import Context, redact_url

__all__ = ["HealthWatch"]

FIRST_RETRY_SECS = 1.0
MAX_RETRY_SECS = 60.0
HEALTHY_EVERY_SECS = 30.0
PROBE_TIMEOUT_SECS = 10.0


class HealthWatch:
    """Probes the gateway's ``/health`` for as long as the source runs."""

    def __init__(self, url: str, client: httpx.AsyncClient, ctx: Context, check: str) -> None:
        self.url = url.rstrip("/") + "/health"
        self.shown = redact_url(self.url)
        """The URL as /health, /stats and logs show it (password masked)."""
        self._client = client
        self._ctx = ctx
        self._check = check
        self.healthy: bool | None = None

    async def run(self) -> None:
        delay = FIRST_RETRY_SECS
        while True:
            healthy, detail = await self.probe()
            self._update(healthy, detail)
            if healthy:
                delay = FIRST_RETRY_SECS
                await anyio.sleep(HEALTHY_EVERY_SECS)
            else:
                await anyio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECS)

    async def probe(self) -> tuple[bool, str]:
        """``(healthy, what was seen)``."""
        try:
            with anyio.fail_after(PROBE_TIMEOUT_SECS):
                reply = await self._client.get(self.url)
        except TimeoutError:
            return False, f"no answer within {PROBE_TIMEOUT_SECS:g}s"
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return reply.is_success, f"HTTP {reply.status_code}"

    def _update(self, healthy: bool, detail: str) -> None:
        extra = {} if healthy else {"error": detail}
        if not self._ctx.report_check(self._check, healthy, url=self.shown, **extra):
            return
        was, self.healthy = self.healthy, healthy
        log = self._ctx.logger
        if not healthy:
            log.warning("gateway unhealthy at %s (%s); retrying with backoff", self.shown, detail)
        elif was is None:
            log.info("gateway healthy at %s", self.shown)
        else:
            log.info("gateway healthy again at %s", self.shown)
