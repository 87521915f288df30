"""observer_core.auth: a token or a list of tokens, matched in constant time."""

from __future__ import annotations

import pytest

from observer_core import Tokens


def test_no_token_means_no_auth() -> None:
    assert not Tokens(None)
    assert not Tokens([])


def test_one_token() -> None:
    tokens = Tokens("s3cret")
    assert tokens
    assert tokens.matches(b"s3cret")
    assert not tokens.matches(b"s3cre")
    assert not tokens.matches(b"s3cretx")
    assert not tokens.matches(b"")


def test_any_token_of_a_list() -> None:
    tokens = Tokens(["old", "new"])
    assert tokens.matches(b"old") and tokens.matches(b"new")
    assert not tokens.matches(b"oldnew") and not tokens.matches(b"")


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="a token cannot be empty"):
        Tokens(["ok", ""])
