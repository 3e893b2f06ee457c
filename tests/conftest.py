"""Shared fixtures. The lab starts once per test session (unless it is already up, in which
case it is left running afterwards) and every process it started is stopped at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.__main__ import up
from lab.core import REPO, Lab
from shared.config import Settings, load_settings


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The running lab; started here if it was not running, and stopped after the session."""
    root = Path(os.environ.get("LAB_DIR", REPO / ".lab"))
    lab = Lab.open(root)
    was_up = bool(lab.peers) and all(lab.alive(name) for name in lab.peers)
    up(lab)
    yield lab
    if not was_up:
        lab.stop_all()


@pytest.fixture(scope="session")
def settings(lab: Lab) -> Settings:
    """The service's settings as the lab writes them."""
    return load_settings(lab.settings_file)
