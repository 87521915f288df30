"""The one helper that masks secrets wherever the process shows them (CONTRACT §11.4)."""

from __future__ import annotations

import pytest

from observer_core.redact import MASK, redact_config, redact_text, redact_url, redact_webhook


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pass@host:3700/x?y=1", f"http://user:{MASK}@host:3700/x?y=1"),
        ("https://:pass@host", f"https://:{MASK}@host"),
        ("nats://u:p@a:4222,nats://b:4222", f"nats://u:{MASK}@a:4222,nats://b:4222"),
        ("nats://s3cr3t-token@a:4222", f"nats://{MASK}@a:4222"),
        ("tls://tok@a:4222", f"tls://{MASK}@a:4222"),
        ("http://user@host", "http://user@host"),  # a user is not a secret
        ("http://host:3700", "http://host:3700"),
        ("not a url @ all", "not a url @ all"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_webhook_masks_path_and_query() -> None:
    url = "https://hooks.slack.com/services/T000/B000/XXXX?token=abc"
    assert redact_webhook(url) == f"https://hooks.slack.com/{MASK}"
    assert redact_webhook("https://u:p@h/") == f"https://u:{MASK}@h/"


def test_redact_text_masks_passwords_in_free_text() -> None:
    text = "cannot reach http://u:hunter2@gw:1/x (refused); nats://a:b@n"
    assert redact_text(text) == f"cannot reach http://u:{MASK}@gw:1/x (refused); nats://a:{MASK}@n"


def test_redact_config_masks_every_kind_of_secret() -> None:
    table = {
        "plugin": "gateway",
        "url": "http://u:hunter2@gw",
        "token": ["old", "new"],
        "listen_token": "t",
        "password": "p",
        "api_key": "k",
        "headers": {"Authorization": "Bearer x", "X-Api-Key": "y"},
        "webhook_url": "https://hooks.example/T/B/secret",
        "fleet": {"url": "nats://tok@n:4222", "bucket": "b"},
        "port": 3800,
        "note": "see http://a:b@c",
    }
    assert redact_config(table) == {
        "plugin": "gateway",
        "url": f"http://u:{MASK}@gw",
        "token": [MASK, MASK],
        "listen_token": MASK,
        "password": MASK,
        "api_key": MASK,
        "headers": {"Authorization": MASK, "X-Api-Key": MASK},
        "webhook_url": f"https://hooks.example/{MASK}",
        "fleet": {"url": f"nats://{MASK}@n:4222", "bucket": "b"},
        "port": 3800,
        "note": f"see http://a:{MASK}@c",
    }
    webhook = redact_config({"plugin": "webhook", "url": "https://h/T/B/secret"})
    assert webhook["url"] == f"https://h/{MASK}"
    assert table["token"] == ["old", "new"]  # a copy: the config itself is untouched
