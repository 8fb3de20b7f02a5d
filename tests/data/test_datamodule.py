"""The guarantees of EpisodicDataModule (issue 2), each shown by behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import Dataset, TensorDataset

from lightning_meta import Episode
from lightning_meta.data import EpisodicDataModule, Sinusoid
from tests.helpers.record_episodes import EpisodeRecorder, sinusoid_datamodule

REPO = Path(__file__).resolve().parents[2]


def blobs(n_classes: int = 8, per_class: int = 10, dim: int = 3) -> TensorDataset:
    """Class c is a cloud around the point (c, c, c); labels are shuffled so classes are interleaved."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    perm = torch.randperm(len(y), generator=g)
    x = y[perm].float().unsqueeze(1).expand(-1, dim) + 0.1 * torch.randn(len(y), dim, generator=g)
    return TensorDataset(x, y[perm])


def all_batches(loader) -> list[Episode]:
    return list(loader)


def assert_same_batches(a: list[Episode], b: list[Episode]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for name in ("support_x", "support_y", "query_x", "query_y", "task_ids"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name


def fingerprint(batches: list[Episode]) -> list[list[float]]:
    return [[float(t.support_x.sum()), float(t.query_x.sum()), *t.support_y.tolist()] for t in batches]


# ---------------------------------------------------------------------------------------------------- episodes
def test_classification_episode_has_remapped_labels_its_support_shuffled():
    data = blobs()
    dm = EpisodicDataModule(data, ways=3, shots=2, queries=4, tasks_per_batch=5, train_episodes=10)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.batched and batch.n_tasks == 5 and batch.ways == 3
    assert batch.support_x.shape == (5, 6, 3) and batch.query_x.shape == (5, 12, 3)
    # the support set in a random order (SNAIL must not learn a class from its position), two of each label
    assert sorted(batch.support_y[0].tolist()) == [0, 0, 1, 1, 2, 2]
    assert any(task.support_y.tolist() != [0, 0, 1, 1, 2, 2] for task in batch)
    assert batch.query_y[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for task in batch:
        # every example of label j comes from one class of the dataset (blob centre = class id)
        centres = torch.cat([task.support_x, task.query_x])[:, 0].round()
        labels = torch.cat([task.support_y, task.query_y])
        classes = [set(centres[labels == j].tolist()) for j in range(3)]
        assert all(len(c) == 1 for c in classes) and len(set.union(*classes)) == 3
        # support and query examples are distinct examples
        rows = torch.cat([task.support_x, task.query_x])
        assert len({tuple(r.tolist()) for r in rows}) == len(rows)


def test_class_to_label_assignment_is_random_across_episodes():
    dm = EpisodicDataModule(blobs(), ways=3, shots=1, queries=1, tasks_per_batch=1, train_episodes=40)
    dm.setup("fit")
    first_class = {int(b.support_x[0, 0, 0].round()) for b in dm.train_dataloader()}
    assert len(first_class) > 3  # label 0 is not always the smallest class


def test_sinusoid_tasks_follow_the_maml_ranges():
    dm = EpisodicDataModule(Sinusoid(), shots=10, queries=10, tasks_per_batch=25, train_episodes=100)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    assert batch.ways is None and x.shape == (25, 20, 1)
    assert x.min() >= -5 and x.max() <= 5
    assert y.abs().max() <= 5.0 and y.abs().amax(1).min() > 0  # amplitude within (0.1, 5]
    # each task is one sinusoid: recover amplitude and phase by least squares on sin/cos features, residual ~ 0
    feats = torch.cat([torch.sin(x), torch.cos(x)], -1).double()
    coef = torch.linalg.lstsq(feats, y.double()).solution
    assert (feats @ coef - y.double()).abs().max() < 1e-4
    amplitude = coef.squeeze(-1).norm(dim=-1)
    assert amplitude.min() >= 0.1 - 1e-4 and amplitude.max() <= 5.0 + 1e-4


def test_evaluation_may_use_other_ways_and_shots_than_training():
    data = blobs(n_classes=8, per_class=10)
    dm = EpisodicDataModule(data, data, ways=6, shots=1, queries=2, eval_ways=3, eval_shots=4, eval_queries=3,
                            tasks_per_batch=2, eval_tasks_per_batch=3, train_episodes=4, eval_episodes=6)  # fmt: skip
    dm.setup("fit")
    train, val = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))
    assert (train.ways, train.support_x.shape[:2], train.query_x.shape[:2]) == (6, (2, 6), (2, 12))
    assert (val.ways, val.support_x.shape[:2], val.query_x.shape[:2]) == (3, (3, 12), (3, 9))


# ------------------------------------------------------------------------------------------ 1. reproducibility
def test_same_seed_gives_same_episodes_with_zero_and_two_workers():
    def batches(num_workers: int) -> tuple[list[Episode], list[Episode]]:
        dm = EpisodicDataModule(blobs(), blobs(), ways=3, shots=2, queries=3, tasks_per_batch=2,
                                train_episodes=12, eval_episodes=7, num_workers=num_workers, seed=3)  # fmt: skip
        dm.setup("fit")
        return all_batches(dm.train_dataloader()), all_batches(dm.val_dataloader())

    (train0, val0), (train2, val2) = batches(0), batches(2)
    assert_same_batches(train0, train2)
    assert_same_batches(val0, val2)
    assert len(train0) == 6 and [b.n_tasks for b in val0] == [2, 2, 2, 1]


def test_same_seed_gives_same_episodes_in_another_process():
    code = (
        "import json; from tests.data.test_datamodule import blobs, fingerprint;"
        "from lightning_meta.data import EpisodicDataModule as D;"
        "dm = D(blobs(), ways=3, shots=2, queries=3, tasks_per_batch=2, train_episodes=8, seed=3); dm.setup('fit');"
        "print(json.dumps(fingerprint([t for b in dm.train_dataloader() for t in b])))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    dm = EpisodicDataModule(blobs(), ways=3, shots=2, queries=3, tasks_per_batch=2, train_episodes=8, seed=3)
    dm.setup("fit")
    here = fingerprint([t for b in dm.train_dataloader() for t in b])
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here  # floats survive JSON exactly


def test_different_seeds_give_different_episodes():
    def first(seed: int) -> Episode:
        dm = EpisodicDataModule(blobs(), ways=3, shots=2, queries=3, tasks_per_batch=2, train_episodes=8, seed=seed)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    assert not torch.equal(first(0).support_x, first(1).support_x)


# --------------------------------------------------------------------------------- 2. epochs and fixed evaluation
def test_training_episodes_change_every_epoch_and_evaluation_episodes_do_not():
    data = blobs()
    dm = EpisodicDataModule(data, data, data, ways=3, shots=2, queries=3, tasks_per_batch=2, train_episodes=8,
                            eval_episodes=6)  # fmt: skip
    dm.setup("fit")
    dm.setup("test")
    train = dm.train_dataloader()
    epoch0 = fingerprint([t for b in train for t in b])
    train.sampler.set_epoch(1)
    epoch1 = fingerprint([t for b in train for t in b])
    train.sampler.set_epoch(0)
    assert fingerprint([t for b in train for t in b]) == epoch0
    assert epoch0 != epoch1
    val_a, val_b = all_batches(dm.val_dataloader()), all_batches(dm.val_dataloader())
    val_b_epoch = dm.val_dataloader()
    val_b_epoch.sampler.set_epoch(5)  # evaluation ignores the epoch
    assert_same_batches(val_a, val_b)
    assert_same_batches(val_a, all_batches(val_b_epoch))
    assert fingerprint(val_a) != fingerprint(all_batches(dm.test_dataloader()))


def test_trainer_sees_new_training_episodes_each_epoch():
    model = EpisodeRecorder()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, sinusoid_datamodule(tasks_per_batch=4, train_episodes=8))
    by_epoch = [[s["sums"] for s in model.seen if s["epoch"] == e] for e in range(3)]
    assert [len(e) for e in by_epoch] == [2, 2, 2]
    assert by_epoch[0] != by_epoch[1] != by_epoch[2] != by_epoch[0]
    assert all(s["ids"] in ([0, 1, 2, 3], [4, 5, 6, 7]) for s in model.seen)


# ------------------------------------------------------------------------------------------------------ 3. DDP
def _record(tmp_path: Path, devices: int, tasks_per_batch: int) -> list[list[dict]]:
    out = tmp_path / f"d{devices}"
    cmd = [sys.executable, "-m", "tests.helpers.record_episodes", "--devices", str(devices),
           "--tasks-per-batch", str(tasks_per_batch), "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)]


def test_ddp_ranks_get_different_tasks_that_together_match_a_doubled_meta_batch(tmp_path):
    rank0, rank1 = _record(tmp_path, devices=2, tasks_per_batch=2)
    (single,) = _record(tmp_path, devices=1, tasks_per_batch=4)
    assert len(rank0) == len(rank1) == len(single) == 12  # 24 episodes / 4 per global step, 2 epochs
    for a, b, s in zip(rank0, rank1, single, strict=True):
        assert a["epoch"] == b["epoch"] == s["epoch"]
        assert not set(a["ids"]) & set(b["ids"])
        assert a["ids"] + b["ids"] == s["ids"]
        assert a["sums"] + b["sums"] == s["sums"]  # the same episodes, not only the same ids


# ---------------------------------------------------------------------------------------------------- 4. resume
@pytest.mark.parametrize(("stop_step", "num_workers"), [(3, 0), (8, 0), (6, 0), (8, 2)])
def test_resumed_run_continues_with_the_episodes_of_the_uninterrupted_run(tmp_path, stop_step, num_workers):
    """6 meta-batches per epoch, 2 epochs; stop mid-epoch 0 (3), mid-epoch 1 (8) and at the epoch boundary (6)."""

    def trainer(**kwargs) -> L.Trainer:
        return L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, **kwargs)  # fmt: skip

    def datamodule() -> EpisodicDataModule:
        return sinusoid_datamodule(tasks_per_batch=4, num_workers=num_workers)

    torch.manual_seed(0)
    full = EpisodeRecorder()
    trainer(enable_checkpointing=False).fit(full, datamodule())

    torch.manual_seed(0)
    first = EpisodeRecorder()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=stop_step, save_top_k=-1)
    trainer(max_steps=stop_step, callbacks=[checkpoint]).fit(first, datamodule())
    path = tmp_path / f"epoch={(stop_step - 1) // 6}-step={stop_step}.ckpt"
    assert path.exists(), sorted(os.listdir(tmp_path))

    second = EpisodeRecorder()
    trainer(enable_checkpointing=False).fit(second, datamodule(), ckpt_path=path)
    assert len(first.seen) == stop_step
    assert first.seen + second.seen == full.seen
    assert torch.equal(second.line.weight, full.line.weight)


# ------------------------------------------------------------------------------------------- 5. bad requests
class Unlabelled(Dataset):
    """No labels attribute: the datamodule must make one pass over dataset[i][1]."""

    def __init__(self, labels: list) -> None:
        self.items = labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, object]:
        return torch.full((2,), float(i)), self.items[i]


def test_labels_are_read_by_one_pass_when_the_dataset_has_no_labels_attribute():
    data = Unlabelled([i % 4 for i in range(20)])
    dm = EpisodicDataModule(data, ways=4, shots=2, queries=3, tasks_per_batch=1, train_episodes=1)
    dm.setup("fit")
    task = next(iter(dm.train_dataloader()))
    ids = torch.cat([task.support_x[0, :, 0], task.query_x[0, :, 0]]).long()
    labels = torch.cat([task.support_y[0], task.query_y[0]])
    # consistent relabelling: examples sharing a label share the original class id % 4
    for j in range(4):
        assert len(set((ids[labels == j] % 4).tolist())) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ways": 9}, r"ways=9 exceeds the number of classes in the train split \(8 classes\)"),
        ({"shots": 5, "queries": 6}, r"shots \+ queries = 5 \+ 6 = 11 exceeds the 10 examples of class label \d"),
        ({"eval_ways": 20}, r"eval_ways=20 exceeds the number of classes in the val split \(8 classes\)"),
    ],
)
def test_impossible_requests_fail_at_setup_naming_setting_limit_and_value(kwargs, message):
    data = blobs(n_classes=8, per_class=10)
    dm = EpisodicDataModule(data, data, **{"queries": 2, "tasks_per_batch": 1, "train_episodes": 1, **kwargs})
    with pytest.raises(ValueError, match=message):
        dm.setup("fit")


def test_too_small_class_is_named():
    class Named(TensorDataset):
        classes = ["cat", "dog", "owl"]

    y = torch.tensor([0] * 5 + [1] * 2 + [2] * 5)
    with pytest.raises(ValueError, match=r"examples of class 'dog' \(label 1\) in the train split"):
        EpisodicDataModule(Named(torch.zeros(12, 1), y), ways=2, shots=1, queries=2).setup("fit")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (TensorDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)), "The train split is empty"),
        (TensorDataset(torch.zeros(4, 2), torch.tensor([0.5, 1.0, 0.5, 1.0])), "labels must be integers.*float"),
        (Unlabelled(["a", "b", "a", "b"]), "labels must be integers"),
    ],
)
def test_bad_datasets_fail_at_setup(data, message):
    with pytest.raises(ValueError, match=message):
        EpisodicDataModule(data, ways=2, shots=1, queries=1).setup("fit")


@pytest.mark.parametrize("name", ["ways", "shots", "queries", "tasks_per_batch", "train_episodes", "eval_episodes"])
@pytest.mark.parametrize("value", [0, -3])
def test_zero_or_negative_counts_are_refused(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got {value}"):
        EpisodicDataModule(Sinusoid(), **{name: value})


def test_train_episodes_smaller_than_a_meta_batch_is_refused():
    dm = EpisodicDataModule(Sinusoid(), tasks_per_batch=4, train_episodes=3)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"train_episodes=3 is smaller than one meta-batch across ranks"):
        dm.train_dataloader()


def test_missing_split_is_refused_when_its_stage_runs():
    with pytest.raises(ValueError, match="no test data: pass test="):
        EpisodicDataModule(Sinusoid()).setup("test")
