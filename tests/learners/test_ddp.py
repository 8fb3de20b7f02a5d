"""Every learner under real 2-process DDP (gloo, CPU) with no Trainer flag beyond strategy and devices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.ddp_one_step import LEARNERS
from tests.helpers.ddp_test_metrics import NAMES, run

pytestmark = pytest.mark.integration  # two processes over gloo, started by a module fixture

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def one_step_parameters(tmp_path_factory) -> dict[str, tuple[dict, dict, dict]]:
    """(2 processes x 2 tasks, 1 process x 4 tasks, initial) parameters of every learner after one step."""
    out = tmp_path_factory.mktemp("ddp")
    for devices, tasks in ((2, 2), (1, 4)):
        cmd = [sys.executable, "-m", "tests.helpers.ddp_one_step", "--devices", str(devices),
               "--tasks-per-batch", str(tasks), "--out", str(out / f"d{devices}")]  # fmt: skip
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    initial = {}
    for name, make in LEARNERS.items():
        torch.manual_seed(0)
        initial[name] = {n: p.detach().clone() for n, p in make().named_parameters()}
    return {
        name: (torch.load(out / "d2" / f"{name}.pt"), torch.load(out / "d1" / f"{name}.pt"), initial[name])
        for name in LEARNERS
    }


@pytest.mark.parametrize("name", list(LEARNERS))
def test_two_process_step_equals_one_process_step_on_twice_the_tasks(one_step_parameters, name):
    ddp, single, initial = one_step_parameters[name]
    assert ddp.keys() == single.keys() == initial.keys()
    assert any(not torch.equal(single[n][0], initial[n]) for n in single)  # the step did change the weights
    for n in ddp:
        (ddp_param, ddp_grad), (param, grad) = ddp[n], single[n]
        torch.testing.assert_close(ddp_grad, grad, rtol=1e-4, atol=1e-7, msg=f"{name}: gradient of {n}")
        # Adam turns a gradient that is zero up to rounding (ProtoNet's last bias, R2D2's logit bias: both shift
        # every logit alike) into a full step of random sign; compare the weights only where the gradient is real.
        if grad.abs().max() > 1e-5:
            torch.testing.assert_close(ddp_param, param, rtol=1e-5, atol=1e-6, msg=f"{name}: {n} after the step")


def test_two_process_test_accuracy_and_interval_equal_the_single_process_ones(tmp_path):
    """Uneven split (5 + 4 episodes): every rank reports the metrics of all 9 episodes, as one process does."""
    command = [sys.executable, "-m", "tests.helpers.ddp_test_metrics", "--devices", "2", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in NAMES:
        single = run(name, devices=1)
        keys = ("test/acc", "test/acc_ci95") if "test/acc" in single else ("test/mse",)  # MAML: sinusoid regression
        for rank in (0, 1):
            ddp = torch.load(tmp_path / f"{name}.rank{rank}.pt")
            assert ddp.keys() == single.keys()
            for key in keys:
                assert ddp[key] == pytest.approx(single[key], abs=1e-6), (name, rank, key)
            # the loss is Lightning's batch-size-weighted mean over the ranks' meta-batches
            assert ddp["test/loss"] == pytest.approx(single["test/loss"], rel=1e-5), (name, rank)


def test_carried_reptile_state_every_rank_starts_each_step_from_rank_zeros(tmp_path):
    """Reptile(carry_inner_state=True): DDP broadcasts buffers before each forward, so the state follows rank 0."""
    command = [sys.executable, "-m", "tests.helpers.ddp_carried_state", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(len(r["starts"]) == len(r["ends"]) == 3 for r in ranks)
    for step in range(3):
        for key, value in ranks[0]["starts"][step].items():
            assert torch.equal(ranks[1]["starts"][step][key], value), (step, key)
        if step:  # ... which is rank 0's state at the end of the step before
            for key, value in ranks[0]["ends"][step - 1].items():
                assert torch.equal(ranks[0]["starts"][step][key], value), (step, key)
    # the ranks' own ends differ (different tasks), so the equalities above are the broadcast, not a coincidence
    assert any(not torch.equal(ranks[0]["ends"][0][k], ranks[1]["ends"][0][k]) for k in ranks[0]["ends"][0])
    assert int(ranks[0]["ends"][2]["steps_taken"]) == 3 * 2 * 2
