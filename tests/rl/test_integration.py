"""MAMLPolicyGradient under real 2-process DDP (with AdaptationCurve), and killed mid-epoch then resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_meta.rl import TaskDataModule
from tests.rl.runs import CURVE_STEPS, CURVE_TASKS, tiny_datamodule, tiny_learner

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _run(*args: str, out: Path) -> None:
    command = [sys.executable, "-m", "tests.rl.runs", *args, "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


def test_two_process_ddp_gets_distinct_tasks_and_the_gradient_of_one_process_on_all_of_them(tmp_path):
    _run("ddp", "--devices", "2", "--tasks-per-batch", "2", out=tmp_path / "ddp")
    _run("ddp", "--devices", "1", "--tasks-per-batch", "4", out=tmp_path / "single")
    ranks = [torch.load(tmp_path / "ddp" / f"tasks.rank{r}.pt") for r in (0, 1)]
    single = torch.load(tmp_path / "single" / "tasks.rank0.pt")
    assert ranks[0]["ids"][0].tolist() == [0, 1] and ranks[1]["ids"][0].tolist() == [2, 3]
    assert not torch.equal(ranks[0]["goals"][0], ranks[1]["goals"][0])
    assert torch.equal(torch.cat([ranks[0]["goals"][0], ranks[1]["goals"][0]]), single["goals"][0])
    ddp, one = torch.load(tmp_path / "ddp" / "step.pt"), torch.load(tmp_path / "single" / "step.pt")
    assert ddp.keys() == one.keys()
    for name in ddp:
        torch.testing.assert_close(ddp[name][1], one[name][1], rtol=1e-4, atol=1e-7, msg=f"gradient of {name}")
        torch.testing.assert_close(ddp[name][0], one[name][0], rtol=1e-5, atol=1e-6, msg=f"{name} after the step")


def test_killed_mid_epoch_and_resumed_run_ends_bit_identical(tmp_path):
    interrupted = tmp_path / "interrupted"
    command = [sys.executable, "-m", "tests.rl.runs", "fit", "--out", str(interrupted), "--hang-at-step", "5"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _run("fit", out=tmp_path / "uninterrupted")
    deadline = time.monotonic() + 600
    while not (interrupted / "hanging").exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not (interrupted / "final.pt").exists()
    _run("fit", "--resume", out=interrupted)
    checkpoints = sorted(p.name for p in (interrupted / "checkpoints").iterdir())
    assert "epoch=0-step=4.ckpt" in checkpoints and "epoch=1-step=14.ckpt" in checkpoints, checkpoints
    reference = torch.load(tmp_path / "uninterrupted" / "final.pt", weights_only=True)
    resumed = torch.load(interrupted / "final.pt", weights_only=True)
    assert reference["global_step"] == resumed["global_step"] == 14 and reference["epoch"] == resumed["epoch"]
    for name, value in reference["weights"].items():
        assert torch.equal(value, resumed["weights"][name]), name
    for key, state in reference["optimizer"]["state"].items():
        for field, value in state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][key][field]), (key, field)


def test_adaptation_curve_under_two_process_ddp_splits_the_tasks_and_logs_the_one_process_returns(tmp_path):
    _run("curve", "--devices", "2", out=tmp_path)
    evaluated = [torch.cat(torch.load(tmp_path / f"curve-tasks.rank{r}.pt")) for r in (0, 1)]
    assert sorted(torch.cat(evaluated).tolist()) == list(range(CURVE_TASKS))  # each task on one rank only
    assert evaluated[0].numel() and evaluated[1].numel()
    writes = {r: (tmp_path / f"writes-rank{r}.txt") for r in (0, 1)}
    assert writes[0].read_text().split() == [str(tmp_path / "figures" / "epoch=0.png")] and not writes[1].exists()
    run = torch.load(tmp_path / "curve.pt", weights_only=True)
    # one process, the same weights, the datamodule's fixed validation tasks in one meta-batch
    learner = tiny_learner()
    learner.load_state_dict(run["weights"])
    reference = tiny_datamodule(2, train_tasks=8)
    dm = TaskDataModule(reference.family, tasks_per_batch=2, eval_tasks_per_batch=CURVE_TASKS, eval_tasks=CURVE_TASKS,
                        seed=reference.seed)  # fmt: skip
    dm.setup("validate")
    (batch,) = list(dm.val_dataloader())
    expected = learner.returns_after(batch, max(CURVE_STEPS)).mean(dim=1)
    for k in CURVE_STEPS:
        assert run["logged"][k] == pytest.approx(float(expected[k]), rel=1e-5), k
        assert run["history"][0][k] == pytest.approx(float(expected[k]), rel=1e-5), k
