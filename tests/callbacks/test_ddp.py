"""The callbacks under real 2-process DDP (gloo, CPU): each file written once, logged values of one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers.callback_runs import image_maml, logged, quiet_trainer, read_metrics, reference_step_scores
from tests.helpers.ddp_callbacks import EPISODES, STEPS, datamodule

pytestmark = pytest.mark.integration  # two processes over gloo, started by a module fixture

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp-callbacks")
    cmd = [sys.executable, "-m", "tests.helpers.ddp_callbacks", "--devices", "2", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "world_size.txt").read_text() == "2"
    return out


def test_two_processes_write_each_png_exactly_once_from_rank_zero(ddp_run):
    log_dir = ddp_run / "logs" / "lightning_logs" / "version_0"
    expected = sorted(str(log_dir / kind / f"epoch={e}.png") for kind in ("adaptation_curve", "episode_gallery")
                      for e in (0, 1))  # fmt: skip
    assert not (ddp_run / "writes-rank1.txt").exists()
    writes = (ddp_run / "writes-rank0.txt").read_text().split()
    assert sorted(writes) == expected  # each once
    for path in writes:
        image = Image.open(path)
        image.load()
        assert image.size[0] > 100 and image.size[1] > 100
    assert sorted(str(p) for p in (ddp_run / "logs").rglob("*.png")) == expected
    assert [p.name for p in (ddp_run / "logs" / "lightning_logs").iterdir()] == ["version_0"]


def test_logged_values_equal_one_process_evaluating_every_episode(ddp_run, tmp_path):
    rows = read_metrics(ddp_run / "logs" / "lightning_logs" / "version_0")
    learner = image_maml()
    learner.load_state_dict(torch.load(ddp_run / "final.pt"))
    (tested,) = quiet_trainer(tmp_path).test(learner, datamodule(), verbose=False)
    assert logged(rows, "meta_test/acc")[-1] == (1, pytest.approx(tested["test/acc"], abs=1e-6))
    assert logged(rows, "meta_test/acc_ci95")[-1][1] == pytest.approx(tested["test/acc_ci95"], rel=1e-5)
    dm = datamodule()
    dm.setup("fit")
    expected = reference_step_scores(learner, dm.val_dataloader(), STEPS)
    assert len(list(dm.val_dataloader())) * dm.eval_tasks_per_batch >= EPISODES
    for k, value in expected.items():
        assert logged(rows, f"adaptation/acc_{k}_steps")[-1][1] == pytest.approx(value, abs=1e-6), k
