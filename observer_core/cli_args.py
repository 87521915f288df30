"""What every ``observer-core`` sub-command that reads a config registers the same way."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_config_command"]


def add_config_command(
    commands: Any, name: str, *, summary: str, description: str, config_help: str
) -> argparse.ArgumentParser:
    """Register sub-command ``name`` on ``commands`` (``summary`` in the command list,
    ``description`` in its ``--help``) with its ``--config FILE`` option; return its parser."""
    command: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=description
    )
    command.add_argument("--config", type=Path, help=config_help)
    return command
