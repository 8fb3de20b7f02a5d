"""Kill a training process mid-epoch, resume it with ``ckpt_path="last"``: bit-identical to an uninterrupted run.

Every learner, a plain ``nn.Sequential`` backbone and a user's subclass that builds its own module, runs in a real
subprocess (tests/helpers/killed_run.py) that is SIGKILLed after it has written a
checkpoint in the middle of an epoch; a new process resumes it. Weights (learned inner rates included), the
optimizer and scheduler states, a stateful callback, the step and the epoch must all equal those of a run that was
never interrupted, bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.killed_run import RESUMED

pytestmark = pytest.mark.integration  # real subprocesses, killed and resumed: about a minute

REPO = Path(__file__).resolve().parents[1]
HANG_AT_STEP = 5  # the checkpoint of step 4 is on disk; step 5 is lost with the process and done again


def _command(out: Path, *names: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "tests.helpers.killed_run", "--out", str(out), "--learner", *names, *extra]


def _run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(uninterrupted, killed-then-resumed) output folders, one subfolder per learner."""
    root = tmp_path_factory.mktemp("resume")
    uninterrupted, interrupted = root / "uninterrupted", root / "interrupted"
    # One process per learner, killed once it has written a checkpoint (they run side by side).
    hanging = {
        name: subprocess.Popen(
            _command(interrupted, name, extra=("--hang-at-step", str(HANG_AT_STEP))),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in RESUMED
    }
    _run(_command(uninterrupted, *RESUMED))
    deadline = time.monotonic() + 600
    for name, process in hanging.items():
        marker = interrupted / name / "hanging"
        while not marker.exists():
            assert process.poll() is None, f"{name} exited before hanging: {process.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"{name} never reached step {HANG_AT_STEP}"
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
        assert not (interrupted / name / "final.pt").exists()
    _run(_command(interrupted, *RESUMED, extra=("--resume",)))
    return uninterrupted, interrupted


def _assert_identical(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("name", list(RESUMED))
def test_killed_and_resumed_run_ends_bit_identical_to_an_uninterrupted_run(runs, name):
    uninterrupted, interrupted = runs
    checkpoints = sorted(p.name for p in (interrupted / name / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and "epoch=0-step=4.ckpt" in checkpoints, checkpoints
    reference = torch.load(uninterrupted / name / "final.pt", weights_only=True)
    resumed = torch.load(interrupted / name / "final.pt", weights_only=True)
    assert reference["global_step"] == 14
    assert "epoch=1-step=14.ckpt" in checkpoints  # the resumed run crossed the epoch boundary (10 meta-batches)
    assert reference["callback"]["batches"] == 14
    assert reference["scheduler"]["last_epoch"] == 14
    _assert_identical(reference, resumed, name)
    if name == "maml++":  # the learned per-layer per-step inner rates were trained (so their equality means something)
        rates = {k: v for k, v in resumed["weights"].items() if k.startswith("inner_lrs")}
        initial = RESUMED[name]().inner_loop.lr
        assert rates and all((v != initial).all() for v in rates.values()), rates
