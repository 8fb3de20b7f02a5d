"""Shared fixtures: the real data in ``../shared/data`` and a once-per-session Omniglot cache."""

from __future__ import annotations

import os
from pathlib import Path

# Inductor compiles in a pool of worker processes by default: on this 2-core CI machine the pool's start-up and its
# shutdown at exit (about 90 s after pytest's summary) cost more than the compiles; one thread compiles in-process.
# Set before torch is imported; subprocess tests inherit it. A value set by the caller wins.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

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


#: What makes a test part of the integration tier (``pytest -m integration``, run by .ci/run after the fast tier).
_INTEGRATION_SIGNS = ("subprocess.", "devices=2", "\"--devices\"", "compile_inner_loop=True", "compiled=True",
                      "torch.compile(", "strategy=\"ddp\"")  # fmt: skip
_REAL_DATA_FIXTURES = ("data_root", "omniglot_cache")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put subprocess, DDP, torch.compile and real-data tests in the integration tier, by what they use.

    The default ``pytest`` run is the fast tier (DEVELOPERS' brief: under 5 minutes on two cores); a test that starts
    processes, compiles, or reads ``../shared/data`` is marked ``integration`` here unless it is already ``slow``, so
    new tests of those kinds land in the right tier without anyone remembering to mark them.
    """
    import inspect

    for item in items:
        if item.get_closest_marker("slow") or item.get_closest_marker("integration"):
            continue
        uses_real_data = any(name in getattr(item, "fixturenames", ()) for name in _REAL_DATA_FIXTURES)
        function = getattr(item, "function", None)
        try:
            source = inspect.getsource(function) if function is not None else ""
        except (OSError, TypeError):
            source = ""
        if uses_real_data or any(sign in source for sign in _INTEGRATION_SIGNS):
            item.add_marker(pytest.mark.integration)
