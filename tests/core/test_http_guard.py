"""`BrowserGuard`: cross-site writes get 403, foreign Host names 400 (contract §11.4).

The guard is a pure function of (method, headers), so it is tested directly; Hypothesis
generates Host values (addresses, names, ports, garbage) against what they must give.
One test sends requests to the real server, which applies it to every request, to show it
reads the headers as the server hands them on (tests/core/test_httpserver.py has the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

import anyio
import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from observer_core.http import HttpServer, Request, Response
from observer_core.http_guard import BrowserGuard, is_loopback_host, normalize_allowed_hosts

PORT = 3800
LOOPBACK = BrowserGuard("127.0.0.1", PORT)
WILDCARD = BrowserGuard("0.0.0.0", PORT)
NAMED = BrowserGuard("0.0.0.0", PORT, ["observer.example.com", "10.0.0.5"])


def headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    """Headers as the server hands them on: names lower-cased, values as sent (latin-1)."""
    return [(name.lower().encode(), value.encode("latin-1")) for name, value in pairs]


def with_host(host: str, *more: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return headers(("Host", host), ("Content-Type", "application/json"), *more)


# -- the usual clients ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"])
@pytest.mark.parametrize(
    "host", ["127.0.0.1:3800", "localhost:3800", "[::1]:3800", "127.0.0.1", "localhost"]
)
def test_clients_that_are_not_browsers_are_unaffected(method: str, host: str) -> None:
    assert LOOPBACK.check(method, with_host(host, ("User-Agent", "curl/8"))) is None


@pytest.mark.parametrize("guard", [LOOPBACK, WILDCARD, NAMED])
def test_a_request_without_host_is_not_the_guards_business(guard: BrowserGuard) -> None:
    """HTTP/1.0 clients may send no Host; browsers always send one."""
    assert guard.check("POST", headers(("Content-Length", "2"))) is None
    assert guard.check("GET", []) is None
    assert guard.check("GET", headers(("Host", ""))) is None  # empty: allowed by RFC 9110


def test_two_host_headers_are_a_bad_request() -> None:
    answer = LOOPBACK.check("GET", headers(("Host", "127.0.0.1"), ("Host", "evil.example")))
    assert answer == (400, "bad request: more than one Host header")
    assert WILDCARD.check("GET", headers(("Host", "a"), ("Host", "a"))) is not None


# -- cross-site writes: 403 ------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "https://evil.example:3800",
        "http://localhost:8080",  # another local service's page: same site, other origin
        "http://127.0.0.1:3801",
        "https://127.0.0.1",
        "null",  # sandboxed frames, file: pages, cross-origin redirects
        "http://127.0.0.1:3800.evil.example",
        "",
    ],
)
def test_an_unsafe_method_from_another_origin_is_refused(method: str, origin: str) -> None:
    answer = LOOPBACK.check(method, with_host("127.0.0.1:3800", ("Origin", origin)))
    assert answer is not None
    status, message = answer
    assert status == 403
    assert f"cross-origin {method} refused" in message and "Origin" in message


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:3800",
        "http://localhost:3800",
        "http://[::1]:3800",
        "HTTP://LOCALHOST:3800",
        "https://localhost:3800",  # a TLS front end on the same port number
    ],
)
def test_the_listeners_own_origin_may_post(origin: str) -> None:
    for host in ("127.0.0.1:3800", "localhost:3800"):
        assert LOOPBACK.check("POST", with_host(host, ("Origin", origin))) is None


def test_the_origin_the_browser_addressed_may_post() -> None:
    """Behind a TLS front end, or on a listener bound to all addresses, the page's origin is
    the Host it was served under: the same scheme-less authority is the listener's own."""
    post = headers(("Host", "observer.example.com"), ("Origin", "https://observer.example.com"))
    assert NAMED.check("POST", post) is None
    assert WILDCARD.check("POST", post) is None
    other = headers(("Host", "observer.example.com"), ("Origin", "https://observer.example.org"))
    assert NAMED.check("POST", other) == (
        403,
        "cross-origin POST refused: Origin 'https://observer.example.org' is not this listener's",
    )
    ftp = headers(("Host", "observer.example.com"), ("Origin", "ftp://observer.example.com"))
    assert NAMED.check("POST", ftp) is not None


def test_a_listener_bound_to_one_address_knows_it_as_its_origin() -> None:
    guard = BrowserGuard("192.0.2.7", PORT)
    assert guard.check("POST", headers(("Origin", "http://192.0.2.7:3800"))) is None
    assert guard.check("POST", headers(("Origin", "http://192.0.2.8:3800"))) is not None


@pytest.mark.parametrize("value", ["cross-site", "Cross-Site", " cross-site "])
def test_sec_fetch_site_cross_site_refuses_a_write_even_without_origin(value: str) -> None:
    answer = LOOPBACK.check("POST", with_host("127.0.0.1:3800", ("Sec-Fetch-Site", value)))
    assert answer == (403, "cross-site POST refused (Sec-Fetch-Site: cross-site)")


@pytest.mark.parametrize("value", ["same-origin", "same-site", "none"])
def test_other_sec_fetch_site_values_pass(value: str) -> None:
    request = with_host("127.0.0.1:3800", ("Sec-Fetch-Site", value))
    assert LOOPBACK.check("POST", request) is None


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_safe_methods_from_other_sites_pass(method: str) -> None:
    """A link from another site to the status page, or a CORS preflight, is not a write."""
    request = with_host(
        "localhost:3800", ("Origin", "http://evil.example"), ("Sec-Fetch-Site", "cross-site")
    )
    assert LOOPBACK.check(method, request) is None


# -- DNS rebinding: 400 ----------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:3800",
        "evil.example",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "127.1",  # inet_aton shorthand: browsers never send it
        "0177.0.0.1",  # octal, likewise
        "2130706433",
        "0.0.0.0:3800",
        "[::]:3800",
        "10.0.0.5",
        "localhost:99999",
        "localhost:38a0",
        "::1",  # IPv6 without brackets
        "[::1",
        "[::1]x",
        "[nonsense]",
    ],
)
def test_a_loopback_listener_refuses_a_foreign_host(host: str) -> None:
    for method in ("GET", "POST"):
        answer = LOOPBACK.check(method, with_host(host))
        assert answer is not None, host
        status, message = answer
        assert status == 400
        assert "is not a loopback name or address, nor in allowed_hosts" in message
        assert "allowed_hosts" in message


@pytest.mark.parametrize(
    "host",
    ["LocalHost:3800", "localhost.:3800", "127.0.0.1:1", "127.255.254.3", "[0:0:0:0:0:0:0:1]"],
)
def test_other_spellings_of_loopback_pass(host: str) -> None:
    assert LOOPBACK.check("GET", with_host(host)) is None


def test_a_loopback_listener_also_accepts_its_allowed_hosts() -> None:
    guard = BrowserGuard("localhost", PORT, ["observer.internal"])
    assert guard.check("GET", with_host("observer.internal:8443")) is None
    assert guard.check("GET", with_host("127.0.0.1:3800")) is None
    assert guard.check("GET", with_host("evil.example")) is not None


def test_a_listener_bound_elsewhere_checks_host_only_with_allowed_hosts() -> None:
    assert WILDCARD.check("GET", with_host("anything.example")) is None
    assert WILDCARD.check("GET", with_host("evil.example")) is None
    assert NAMED.check("GET", with_host("observer.example.com:443")) is None
    assert NAMED.check("GET", with_host("10.0.0.5:3800")) is None
    answer = NAMED.check("GET", with_host("localhost:3800"))
    assert answer is not None and answer[0] == 400
    assert "is not in allowed_hosts" in answer[1] and "loopback" not in answer[1]


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_binds_are_recognised(bind: str) -> None:
    assert BrowserGuard(bind, PORT).loopback
    assert BrowserGuard(bind, PORT).check("GET", with_host("evil.example")) is not None


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "", "192.0.2.1", "observer.example.com"])
def test_other_binds_are_not_loopback(bind: str) -> None:
    assert not BrowserGuard(bind, PORT).loopback


def test_a_hostile_host_is_quoted_short_and_escaped() -> None:
    answer = LOOPBACK.check("GET", with_host("evil\r\n\x1b[31m" + "x" * 500))
    assert answer is not None
    message = answer[1]
    assert "\n" not in message and "\x1b" not in message and "\\x1b" in message
    assert len(message) < 300 and message.count("x") < 150


# -- allowed_hosts -------------------------------------------------------------------


def test_allowed_hosts_are_normalized() -> None:
    assert normalize_allowed_hosts(
        ["Observer.Example.com.", "observer.example.com", "::1", "[2001:DB8:0::1]", "10.1.2.3"]
    ) == ("observer.example.com", "[::1]", "[2001:db8::1]", "10.1.2.3")


@pytest.mark.parametrize(
    "entry",
    ["", "http://observer.example.com", "observer.example.com:443", "a/b", "a b", "*.example", "é"],
)
def test_a_bad_allowed_hosts_entry_is_an_error_naming_it(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed_hosts") as raised:
        BrowserGuard("127.0.0.1", PORT, [entry])
    assert repr(entry) in str(raised.value)


def test_a_bad_port_is_an_error() -> None:
    with pytest.raises(ValueError, match="port 70000"):
        BrowserGuard("127.0.0.1", 70000)


# -- in front of the real server ----------------------------------------------------------


class Ok:
    """A listener's handler that answers 200 to everything: what it refuses is the server's."""

    def precheck(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> Response | None:
        return None

    def handle(self, request: Request) -> Response:
        return Response(200, b'{"ok": true}')


@pytest.mark.anyio
async def test_the_server_applies_the_guard_to_what_it_reads() -> None:
    async with HttpServer(Ok(), host="127.0.0.1", port=0) as server:
        own = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=own, timeout=5) as client:
            assert (await client.post("/event", json={})).status_code == 200  # a script
            same = await client.post("/event", json={}, headers={"Origin": own})
            assert same.status_code == 200
            cross = await client.post(
                "/event", content=b"{}", headers={"Origin": "http://evil.example"}
            )
            assert cross.status_code == 403
            assert "Origin 'http://evil.example'" in cross.json()["error"]
            rebound = await client.get("/stats", headers={"Host": f"evil.example:{server.port}"})
            assert rebound.status_code == 400
            assert "allowed_hosts" in rebound.json()["error"]


# The server asks the guard only when a header might make it refuse (a second Host, Origin,
# Sec-Fetch-Site, a Host not among BrowserGuard.quick_hosts): its answers must be the guard's.
HEADS = [
    ["Host: {own}"],
    ["host: {own}"],
    [],
    ["Host: {own}", "Host: {own}"],
    ["Host: {own}", "HOST: evil.example"],
    ["Host: evil.example", "Host: {own}"],
    ["Host: evil.example"],
    ["Host: "],
    ["Host: LOCALHOST:{port}"],
    ["Host: [::1]"],
    ["Host: {own}", "Origin: http://evil.example"],
    ["Host: {own}", "ORIGIN: http://{own}"],
    ["Origin: http://evil.example"],
    ["Host: {own}", "Sec-Fetch-Site: cross-site"],
    ["Sec-Fetch-Site: Cross-Site", "Host: {own}"],
    ["Host: {own}", "sec-fetch-site: same-origin"],
]


async def _status(port: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        with anyio.fail_after(5):
            line = await reader.readline()
        return int(line.split()[1])
    finally:
        writer.close()


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_the_servers_answer_is_the_guards_whatever_the_headers(method: str) -> None:
    async with HttpServer(Ok(), host="127.0.0.1", port=0) as server:
        guard = BrowserGuard("127.0.0.1", server.port)
        for head in HEADS:
            lines = [line.format(own=f"127.0.0.1:{server.port}", port=server.port) for line in head]
            request = f"{method} /event HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines)
            request += "Content-Length: 2\r\n\r\n{}" if method == "POST" else "\r\n"
            pairs = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
            refused = guard.check(method, headers(*pairs))  # type: ignore[arg-type]
            expected = 200 if refused is None else refused[0]
            assert await _status(server.port, request.encode()) == expected, lines


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([LOOPBACK, WILDCARD, NAMED]), st.binary(max_size=40))
@example(LOOPBACK, b"127.0.0.1:3800")
@example(NAMED, b"observer.example.com")
def test_quick_hosts_pass_the_check(guard: BrowserGuard, host: bytes) -> None:
    if guard.quick_hosts is None or host in guard.quick_hosts:
        assert guard.check("POST", [(b"host", host)]) is None
    assert guard.check("POST", []) is None and (guard.quick_hosts is None) == (guard is WILDCARD)


# -- properties ------------------------------------------------------------------------

PORTS = st.one_of(st.just(""), st.integers(0, 65535).map(lambda port: f":{port}"))
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
NAMES = st.lists(LABEL, min_size=1, max_size=4).map(".".join)


def _case(draw: st.DrawFn, text: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in text)


@st.composite
def random_case(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> str:
    return _case(draw, draw(texts))


def _spelled(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return str(address) if address.version == 4 else f"[{address}]"


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(), PORTS)
@example(ipaddress.ip_address("127.0.0.1"), ":3800")
@example(ipaddress.ip_address("::ffff:127.0.0.1"), "")
@example(ipaddress.ip_address("128.0.0.1"), "")
def test_an_address_passes_a_loopback_listener_iff_it_is_loopback(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: str
) -> None:
    mapped = getattr(address, "ipv4_mapped", None)
    loopback = address.is_loopback or (mapped is not None and mapped.is_loopback)
    answer = LOOPBACK.check("GET", with_host(_spelled(address) + port))
    assert (answer is None) == loopback, answer
    if address.version == 6:  # the long spelling is the same address
        long_form = f"[{address.exploded}]{port}"
        assert (LOOPBACK.check("GET", with_host(long_form)) is None) == loopback


@settings(max_examples=300, deadline=None)
@given(random_case(NAMES), PORTS)
@example("localhost.evil.example", "")
@example("evil-localhost", ":3800")
def test_a_name_passes_a_loopback_listener_iff_it_is_localhost(name: str, port: str) -> None:
    answer = LOOPBACK.check("GET", with_host(name + port))
    is_loopback = name.lower() == "localhost"
    if not is_loopback:  # a name spelling a loopback address is an address, not a name
        with contextlib.suppress(ValueError):
            is_loopback = ipaddress.IPv4Address(name).is_loopback
    assert (answer is None) == is_loopback
    assert answer is None or answer[0] == 400


@settings(max_examples=300, deadline=None)
@given(NAMES, random_case(NAMES), PORTS, st.booleans())
def test_an_allowed_name_passes_in_any_case_and_port_and_only_it(
    allowed: str, other: str, port: str, trailing_dot: bool
) -> None:
    guard = BrowserGuard("0.0.0.0", PORT, [allowed])
    spelled = _case_insensitive_variant(allowed) + ("." if trailing_dot else "")
    assert guard.check("GET", with_host(spelled + port)) is None
    for near in (f"{allowed}.{other}", f"{other}.{allowed}", f"{other}{allowed}"):
        answer = guard.check("GET", with_host(near + port))
        assert answer is not None and answer[0] == 400, near
    if other.lower() != allowed:
        assert guard.check("GET", with_host(other + port)) is not None


def _case_insensitive_variant(name: str) -> str:
    return name.upper() if len(name) % 2 else name.title()


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS", "BREW"]),
    st.lists(
        st.tuples(
            st.sampled_from([b"host", b"origin", b"sec-fetch-site", b"x-other"]),
            st.binary(max_size=80),
        ),
        max_size=5,
    ),
)
def test_any_headers_give_an_answer_never_an_exception(
    method: str, pairs: list[tuple[bytes, bytes]]
) -> None:
    for guard in (LOOPBACK, WILDCARD, NAMED):
        answer = guard.check(method, pairs)
        if answer is not None:
            status, message = answer
            assert status in (400, 403)
            assert message.isprintable() and len(message) < 400
        elif method not in ("GET", "HEAD", "OPTIONS"):
            sites = [value.strip().lower() for name, value in pairs if name == b"sec-fetch-site"]
            assert sites[-1:] != [b"cross-site"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=30), min_size=100, max_size=300, unique=True))
def test_what_the_guard_remembers_is_bounded(hosts: list[bytes]) -> None:
    """Accepted Host spellings are remembered to skip parsing, but never more than a few
    (the values are client input, §11.2)."""
    guard = BrowserGuard("127.0.0.1", PORT, ["observer.example.com"])
    for index, host in enumerate(hosts):
        guard.check("GET", [(b"host", b"127.0.0.%d:%d" % (index % 256, index))])
        guard.check("GET", [(b"host", host)])
    assert len(guard._accepted) <= 64


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LocalHost.", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.0.2.1", False),
        ("observer.example.com", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    """The public helper, for whoever decides whether a listener is exposed (§11.1)."""
    assert is_loopback_host(host) is loopback
