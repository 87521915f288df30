"""check_http_url: the one check of a config's outbound URL (issue 20)."""

from __future__ import annotations

import pytest

from observer_core import check_http_url
from observer_core.redact import redact_webhook


def test_an_http_url_with_a_host_is_parsed() -> None:
    url = check_http_url("HTTPS://gateway.example:8443/v1")
    assert (url.scheme, url.host, url.port) == ("https", "gateway.example", 8443)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://gateway", "gateway.url: expected an http:// or https:// URL, got 'ftp://gateway'"),
        ("gateway:8080", "gateway.url: expected an http:// or https:// URL"),
        ("http://", "gateway.url: the URL has no host, got 'http://'"),
        ("http://host:port/", "gateway.url: not a valid URL (InvalidURL)"),
    ],
)
def test_other_urls_are_refused_naming_the_key(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="^" + problem.replace("(", r"\(").replace(")", r"\)")):
        check_http_url(url, "gateway.url")


def test_the_secret_is_not_shown() -> None:
    with pytest.raises(ValueError) as caught:
        check_http_url("ftp://user:hunter2@gateway")
    assert "hunter2" not in str(caught.value)
    secret_path = "https://hooks.example/services/T000/B000/XXXXSECRET"
    with pytest.raises(ValueError) as caught:
        check_http_url(secret_path.replace("https", "ftp"), shown=redact_webhook)
    assert "XXXXSECRET" not in str(caught.value)
