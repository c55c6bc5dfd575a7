"""Fixtures for the model tests: the real encoder and a really trained tiny bot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def encoder():  # type: ignore[no-untyped-def]
    from model.encoder import load_encoder

    return load_encoder()


@pytest.fixture
def shopbot(tmp_path: Path) -> Path:
    """A fresh, untrained copy of the fixture bot project."""
    dest = tmp_path / "shopbot"
    shutil.copytree(FIXTURES / "shopbot", dest)
    return dest


@pytest.fixture(scope="session")
def trained_shopbot(tmp_path_factory: pytest.TempPathFactory, encoder) -> Path:  # type: ignore[no-untyped-def]
    """The fixture bot trained end to end once per session, as ``deskmate train`` does."""
    from model.training import train_project

    dest = tmp_path_factory.mktemp("trained") / "shopbot"
    shutil.copytree(FIXTURES / "shopbot", dest)
    train_project(dest, progress=False)
    return dest
