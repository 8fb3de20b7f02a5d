"""Checkpoints: unreadable files fail clearly and keep the good ones; learners load in a fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_meta.checkpoint import CorruptCheckpointError, checkpoint_problem
from lightning_meta.learners import MAML
from tests.helpers.ddp_one_step import LEARNERS, datamodule
from tests.helpers.killed_run import STEPS
from tests.helpers.trainers import quiet_trainer

REPO = Path(__file__).resolve().parents[1]


def _trainer(**kwargs) -> L.Trainer:
    return quiet_trainer(num_sanity_val_steps=0, limit_val_batches=0, **kwargs)


@pytest.fixture
def checkpoints(tmp_path) -> Path:
    """A folder with the checkpoints of steps 1..3 of a small MAML fit."""
    torch.manual_seed(0)
    callback = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    learner, dm = LEARNERS["maml_vmap"](), datamodule("maml_vmap", 2)
    _trainer(max_steps=3, callbacks=[callback]).fit(learner, dm)
    return tmp_path


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip"])
def test_unreadable_checkpoint_fails_clearly_naming_the_intact_ones(checkpoints, damage):
    newest, previous = checkpoints / "epoch=0-step=3.ckpt", checkpoints / "epoch=0-step=2.ckpt"
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "empty":
        newest.write_bytes(b"")
    else:  # damage bytes inside the weights' storage: only the CRC check notices
        index = data.index(b"data/0") + 200
        newest.write_bytes(data[:index] + bytes(b ^ 0xFF for b in data[index : index + 16]) + data[index + 16 :])
    expected = {"truncate": "cut short", "empty": "empty", "flip": "fails its CRC check"}[damage]
    assert expected in checkpoint_problem(newest)

    with pytest.raises(CorruptCheckpointError, match=expected) as error:
        MAML.load_from_checkpoint(newest)
    assert str(newest) in str(error.value) and str(previous) in str(error.value)

    with pytest.raises(CorruptCheckpointError, match=expected) as error:
        _trainer(max_steps=4).fit(LEARNERS["maml_vmap"](), datamodule("maml_vmap", 2), ckpt_path=newest)
    assert f"ckpt_path='{previous}'" in str(error.value)

    assert checkpoint_problem(previous) is None  # nothing touched the good one; it still resumes
    _trainer(max_steps=4).fit(LEARNERS["maml_vmap"](), datamodule("maml_vmap", 2), ckpt_path=previous)


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint_in_place(tmp_path):
    """Lightning saves to a temporary file and renames it: a crash half-way through a write loses only that one."""
    command = [sys.executable, "-m", "tests.helpers.killed_run", "--out", str(tmp_path), "--learner", "maml_vmap"]
    died = subprocess.run([*command, "--die-while-saving-step", "4"], cwd=REPO, capture_output=True, timeout=600)
    assert died.returncode == -9, died.stderr[-3000:]
    folder = tmp_path / "maml_vmap" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert checkpoint_problem(folder / "last.ckpt") is None
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2

    resumed = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = subprocess.run([*command[:-2], "--out", str(tmp_path / "reference"), "--learner", "maml_vmap"],
                               cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-3000:]
    a = torch.load(tmp_path / "maml_vmap" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "reference" / "maml_vmap" / "final.pt", weights_only=True)
    assert a["global_step"] == b["global_step"] == STEPS
    for key in b["weights"]:
        assert torch.equal(a["weights"][key], b["weights"][key]), key


FRESH_PROCESS = """
import sys, torch
from lightning_meta import learners
assert not any(m.startswith("tests") for m in sys.modules)
for name, cls, path, batch in torch.load(sys.argv[1], weights_only=True):
    learner = getattr(learners, cls).load_from_checkpoint(path)  # torch's weights_only=True default
    learner.eval()
    loss, predictions = learner._eval_forward(torch.load(batch, weights_only=False))
    torch.save(predictions, path + ".predictions")
"""


def test_every_learner_loads_from_its_checkpoint_in_a_fresh_process_without_the_training_code(tmp_path):
    jobs, expected = [], {}
    for name, make in LEARNERS.items():
        torch.manual_seed(0)
        learner, dm = make(), datamodule(name, 2)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / name, save_top_k=-1)
        _trainer(max_steps=2, callbacks=[checkpoint]).fit(learner, dm)
        batch = next(iter(dm.train_dataloader()))
        torch.save(batch, tmp_path / f"{name}.batch")
        learner.eval()
        expected[name] = learner._eval_forward(batch)[1]
        jobs.append((name, type(learner).__name__, checkpoint.best_model_path, str(tmp_path / f"{name}.batch")))
    torch.save(jobs, tmp_path / "jobs.pt")
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "jobs.pt")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for name, _, path, _ in jobs:
        torch.testing.assert_close(torch.load(path + ".predictions"), expected[name], rtol=0, atol=0, msg=name)
