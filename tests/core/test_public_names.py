"""Every name ``observer_core`` promises in ``__all__`` can be imported from it."""

from __future__ import annotations

import importlib

import pytest

import observer_core


@pytest.mark.parametrize("name", sorted(observer_core.__all__))
def test_every_public_name_imports(name: str) -> None:
    module = importlib.import_module("observer_core")
    assert getattr(module, name) is not None
