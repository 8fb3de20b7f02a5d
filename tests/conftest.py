"""Shared fixtures: the real data in ``../shared/data`` and a once-per-session Omniglot cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread: test tensors are tiny, and on a busy 2-core machine (CI runs DDP ranks and dataloader
    workers beside the test process) OpenMP's waiting threads made small steps up to 100x slower."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real few-shot data (``../shared/data`` beside the repository), read-only.

    Tests that need it are skipped when the folder is absent, except under ``CI=true``, where they fail: CI must
    run them.
    """
    if not SHARED_DATA.is_dir():
        message = f"the shared data folder {SHARED_DATA} is absent (tests using real files need ../shared/data)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {message}.")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by the whole session, so the 32,460 Omniglot PNGs are decoded once per size."""
    return tmp_path_factory.mktemp("omniglot-cache")
