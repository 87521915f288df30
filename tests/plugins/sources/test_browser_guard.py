"""Every listener refuses what a browser must not send (SECURITY §11.4), end to end.

One daemon serves the module: the ``http`` source (``allowed_hosts`` naming
``observer.example.com``), a ``status`` and an ``otlp`` source, and two gateway proxies in
front of one upstream: ``plain`` (the defaults) and ``named`` (``allowed_hosts`` naming
``gateway.example.com``). Requests go over loopback as a browser would send them: a page
of another site posting (``Origin``, ``Sec-Fetch-Site``), or a page whose name was rebound
to 127.0.0.1 (its own name in ``Host``). Each test uses its own endpoints, so it finds its
own ops.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from gateway_upstream import WAIT_SECS, Upstream, daemon_config, recorded_ops, the_op

from observer_core.testing import Daemon, DaemonFactory, free_port, wait_for

EVIL = "http://evil.example"
_MARKS = itertools.count()


@dataclass
class Listeners:
    daemon: Daemon
    upstream: Upstream
    ports: dict[str, int]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"


@pytest.fixture(scope="module")
def listeners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listeners]:
    upstream = Upstream()
    ports = {name: free_port() for name in ("status", "otlp", "plain", "named")}
    factory = DaemonFactory(tmp_path_factory.mktemp("browser-guard"))
    daemon = factory.start(
        daemon_config(
            f"""
            [sources.status]
            port = {ports["status"]}

            [sources.otlp]
            port = {ports["otlp"]}

            [sources.plain]
            plugin = "gateway"
            url = "{upstream.url}"
            listen = "127.0.0.1:{ports["plain"]}"
            health_check = false

            [sources.named]
            plugin = "gateway"
            url = "{upstream.url}"
            listen = "127.0.0.1:{ports["named"]}"
            allowed_hosts = ["gateway.example.com"]
            health_check = false
            """,
            http='allowed_hosts = ["observer.example.com"]',
        )
    )
    assert daemon.port is not None
    ports["http"] = daemon.port
    try:
        yield Listeners(daemon, upstream, ports)
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.logs()
    finally:
        factory.close()
        upstream.close()


def post_event(listeners: Listeners, endpoint: str, **headers: str) -> httpx.Response:
    """POST /event of an event for ``endpoint`` to the http source, with ``headers``."""
    body = json.dumps({"endpoint": endpoint}).encode()
    headers.setdefault("Content-Type", "application/json")
    return httpx.post(
        f"{listeners.url('http')}/event", content=body, headers=headers, timeout=WAIT_SECS
    )


def nothing_recorded(listeners: Listeners, endpoint: str) -> bool:
    """Whether no op was recorded for ``endpoint``: checked once an event posted after it
    was recorded (ops are written in order)."""
    mark = f"/mark/{next(_MARKS)}"
    assert post_event(listeners, mark).status_code == 200
    the_op(listeners.daemon, mark)
    return recorded_ops(listeners.daemon, endpoint) == []


def rejected(listeners: Listeners, status: int) -> float:
    return listeners.daemon.metric("observer_requests_rejected_total", status=str(status)) or 0


# -- the ingest port -----------------------------------------------------------------------


def test_a_client_without_origin_is_unaffected(listeners: Listeners) -> None:
    reply = post_event(listeners, "/curl", **{"User-Agent": "curl/8.5.0"})
    assert reply.status_code == 200
    assert the_op(listeners.daemon, "/curl")["endpoint"] == "/curl"


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({"Origin": EVIL}, "cross-origin POST refused: Origin 'http://evil.example'"),
        ({"Origin": "null"}, "Origin 'null'"),
        ({"Sec-Fetch-Site": "cross-site"}, "cross-site POST refused (Sec-Fetch-Site"),
        (  # a form or fetch(no-cors) of another site: no CORS preflight, used to be accepted
            {"Content-Type": "text/plain", "Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
            "cross-site POST refused",
        ),
    ],
    ids=["origin", "origin-null", "sec-fetch-site", "text-plain"],
)
def test_a_cross_site_post_is_403_and_nothing_is_recorded(
    listeners: Listeners, headers: dict[str, str], error: str
) -> None:
    endpoint = f"/cross/{next(_MARKS)}"
    before = rejected(listeners, 403)
    reply = post_event(listeners, endpoint, **headers)
    assert reply.status_code == 403
    assert error in reply.json()["error"]
    assert nothing_recorded(listeners, endpoint)
    assert rejected(listeners, 403) == before + 1


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_a_same_origin_post_is_accepted(listeners: Listeners, name: str) -> None:
    origin = f"http://{name}:{listeners.ports['http']}"
    reply = post_event(
        listeners, f"/same/{name}", Origin=origin, **{"Sec-Fetch-Site": "same-origin"}
    )
    assert reply.status_code == 200
    the_op(listeners.daemon, f"/same/{name}")


def test_a_rebound_name_is_400_on_reads_and_writes(listeners: Listeners) -> None:
    rebound = f"evil.example:{listeners.ports['http']}"
    stats = httpx.get(f"{listeners.url('http')}/stats", headers={"Host": rebound}, timeout=5)
    assert stats.status_code == 400
    assert stats.json() == {
        "error": f"Host '{rebound}' is not a loopback name or address, nor in allowed_hosts (a "
        "guard against DNS rebinding: add the name to the listener's allowed_hosts)"
    }
    # The rebound page posting to itself: its Origin matches its Host, but the Host is refused.
    reply = post_event(listeners, "/rebound", Host=rebound, Origin=f"http://{rebound}")
    assert reply.status_code == 400
    assert nothing_recorded(listeners, "/rebound")


def test_allowed_hosts_admits_a_listed_name(listeners: Listeners) -> None:
    host = "Observer.Example.COM:443"  # any case, any port
    stats = httpx.get(f"{listeners.url('http')}/stats", headers={"Host": host}, timeout=5)
    assert stats.status_code == 200
    origin = "https://observer.example.com"  # a TLS front end forwarding the public name
    reply = post_event(listeners, "/named", Host="observer.example.com", Origin=origin)
    assert reply.status_code == 200
    the_op(listeners.daemon, "/named")


@pytest.mark.parametrize("name", ["status", "otlp"])
def test_the_sources_sharing_the_http_config_are_guarded_too(
    listeners: Listeners, name: str
) -> None:
    url = f"{listeners.url(name)}/v1/traces"  # the otlp route: a 404 on the status source
    usual = httpx.post(url, content=b"{}", timeout=5).status_code
    assert usual not in (400, 403), usual  # 404 on the status source, 415 on the otlp one
    cross = httpx.post(url, content=b"{}", headers={"Origin": EVIL}, timeout=5)
    assert cross.status_code == 403
    rebound = httpx.post(url, content=b"{}", headers={"Host": "evil.example"}, timeout=5)
    assert rebound.status_code == 400 and "allowed_hosts" in rebound.json()["error"]


# -- the gateway proxy ---------------------------------------------------------------------


def test_the_proxy_refuses_a_cross_site_write_without_forwarding_it(
    listeners: Listeners,
) -> None:
    url = listeners.url("plain")
    reply = httpx.post(
        f"{url}/proxy/cross", content=b"{}", headers={"Origin": EVIL}, timeout=WAIT_SECS
    )
    assert reply.status_code == 403 and "Origin 'http://evil.example'" in reply.json()["error"]
    reply = httpx.post(f"{url}/proxy/script", content=b"{}", timeout=WAIT_SECS)  # an agent
    assert reply.status_code == 200
    the_op(listeners.daemon, "/proxy/script")
    assert listeners.upstream.received("/proxy/cross") == []
    assert recorded_ops(listeners.daemon, "/proxy/cross") == []


@pytest.mark.parametrize(
    ("proxy", "host", "status"),
    [
        ("plain", "evil.example", 400),
        ("plain", "localhost", 200),
        ("named", "evil.example", 400),
        ("named", "gateway.example.com", 200),
        ("named", "127.0.0.1", 200),
    ],
)
def test_the_proxy_checks_host(listeners: Listeners, proxy: str, host: str, status: int) -> None:
    path = f"/proxy/host/{proxy}/{host}"
    reply = httpx.get(f"{listeners.url(proxy)}{path}", headers={"Host": host}, timeout=WAIT_SECS)
    assert reply.status_code == status
    forwarded = (
        wait_for(lambda: listeners.upstream.received(path), what=path) if status == 200 else []
    )
    assert len(forwarded) == (status == 200)
    if status == 400:
        assert "allowed_hosts" in reply.json()["error"]


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "where"),
    [
        ('[sources.http]\nport = 1\nallowed_hosts = ["http://observer.example.com"]', "http"),
        ('[sources.http]\nport = 1\nallowed_hosts = ["observer.example.com:443"]', "http"),
        ('[sources.status]\nport = 1\nallowed_hosts = ["a/b"]', "status"),
        (
            '[sources.gw]\nplugin = "gateway"\nlisten = "127.0.0.1:1"\n'
            'allowed_hosts = ["gateway.example.com/v1"]',
            "gw",
        ),
    ],
)
def test_a_bad_allowed_hosts_entry_is_a_config_error(
    observer_daemon: DaemonFactory, table: str, where: str
) -> None:
    observer_daemon.write_config(table)
    result = observer_daemon.run("check", "--config", "observer.toml")
    assert result.returncode == 2
    assert f"[sources.{where}] allowed_hosts: " in result.stderr
    assert "is not a host name or address" in result.stderr


def test_allowed_hosts_is_bounded(observer_daemon: DaemonFactory) -> None:
    names = json.dumps([f"h{i}.example.com" for i in range(65)])
    observer_daemon.write_config(f"[sources.http]\nport = 1\nallowed_hosts = {names}")
    result = observer_daemon.run("check", "--config", "observer.toml")
    assert result.returncode == 2
    assert "[sources.http] allowed_hosts: Expected `array` of length <= 64" in result.stderr
