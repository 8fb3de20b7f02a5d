"""Multi-domain episodes (MultiDomainTasks) and Meta-Dataset's variable-way variable-shot sampling (issue 16)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

from lightning_meta import Episode, InnerLoop
from lightning_meta.data import EpisodeDataset, EpisodicDataModule, MultiDomainTasks, VariableEpisodes
from lightning_meta.learners import ProtoNet
from lightning_meta.models import Conv4
from tests.helpers.multidomain import (
    Recorder,
    constant_images,
    decode,
    domains,
    fingerprint,
    variable_datamodule,
)
from tests.helpers.trainers import quiet_trainer

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ variable sampling
def test_variable_episode_sizes_follow_the_meta_dataset_rules():
    """Every rule of the paper's Appendix, on 300 draws from classes of 4 to 300 examples."""
    sizes = VariableEpisodes()
    counts = torch.tensor([4 + (7 * c) % 297 for c in range(80)])
    seen_ways, ratios = set(), []
    for i in range(300):
        classes, shots, queries = sizes.draw(counts, torch.Generator().manual_seed(i))
        n = counts[classes]
        ways = len(classes)
        seen_ways.add(ways)
        assert 5 <= ways <= 50 and len(set(classes.tolist())) == ways
        assert queries == min(10, int(n.min()) // 2) >= 1
        assert bool((shots >= 1).all()) and bool((shots <= n - queries).all())
        assert int(shots.sum()) <= 500
        ratios.append(float(shots.max() / shots.min()))
    assert min(seen_ways) <= 7 and max(seen_ways) >= 48  # uniform over [5, 50]
    assert max(ratios) > 2.5  # unbalanced shots, up to exp(log 2 - log 0.5) = 4 apart before rounding


def test_variable_episode_sizes_match_a_hand_written_reference():
    """The paper's formulas written out with Python's math, fed the same random numbers in the same order."""
    counts = torch.tensor([30, 9, 100, 50, 12, 70, 20, 45])
    sizes = VariableEpisodes(min_ways=3, max_ways=6, max_support=40, max_shots=20)
    for seed in range(20):
        classes, shots, queries = sizes.draw(counts, torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        ways = int(torch.randint(3, 7, (1,), generator=g))
        chosen = torch.randperm(8, generator=g)[:ways].tolist()
        beta = float(torch.rand((), generator=g, dtype=torch.float64))
        alpha = torch.empty(ways, dtype=torch.float64).uniform_(math.log(0.5), math.log(2), generator=g).tolist()
        n = [int(counts[c]) for c in chosen]
        q = min(10, min(v // 2 for v in n))
        support = min(40, sum(math.ceil(beta * min(20, v - q)) for v in n))
        total = sum(math.exp(a) for a in alpha)
        shares = [math.exp(a) / total for a in alpha]
        expected = [min(math.floor(w * (support - ways)) + 1, v - q) for w, v in zip(shares, n, strict=True)]
        assert classes.tolist() == chosen and queries == q and shots.tolist() == expected


def test_variable_episodes_refuse_impossible_limits():
    with pytest.raises(ValueError, match="min_ways=8 exceeds max_ways=6"):
        VariableEpisodes(min_ways=8, max_ways=6)
    with pytest.raises(ValueError, match="max_support=10 must be at least max_ways=50"):
        VariableEpisodes(max_support=10)
    with pytest.raises(ValueError, match="max_queries must be a positive integer, got 0"):
        VariableEpisodes(max_queries=0)


# ---------------------------------------------------------------------------------------------- the family
def test_multidomain_episode_comes_from_one_domain_with_grouped_labels_and_common_inputs():
    tasks = MultiDomainTasks(domains(), variable=VariableEpisodes(max_ways=10, max_support=60), image_size=8)
    assert tasks.channels == 3 and tasks.image_size == 8
    for i in range(40):
        task = tasks.sample(torch.Generator().manual_seed(i), ways=5, shots=1, queries=1)
        assert task.support_x.shape[1:] == task.query_x.shape[1:] == (3, 8, 8)
        assert torch.equal(task.support_x[:, 0], task.support_x[:, 2])  # grey repeated, colour kept
        domain, cls = decode(torch.cat([task.support_x, task.query_x]))
        assert set(domain.tolist()) == {int(task.domains)} and task.domain_names == ("grey", "colour", "small")
        labels = torch.cat([task.support_y, task.query_y])
        assert task.support_y.tolist() == sorted(task.support_y.tolist())  # grouped by label
        for label in range(task.ways):  # one dataset class per episode label, distinct across labels
            assert len(set(cls[labels == label].tolist())) == 1
        assert len({int(cls[labels == label][0]) for label in range(task.ways)}) == task.ways
        assert len(task.query_y) == task.ways * int((task.query_y == 0).sum())  # balanced queries


def test_multidomain_domains_are_drawn_by_weight():
    tasks = MultiDomainTasks(domains(), weights={"grey": 3.0, "colour": 1.0, "small": 0.0}, image_size=8)
    picks = [
        int(tasks.sample(torch.Generator().manual_seed(i), ways=3, shots=1, queries=1).domains) for i in range(400)
    ]
    share = picks.count(0) / len(picks)
    assert 0.68 < share < 0.82 and 2 not in picks  # 0.75 expected; a zero weight is never drawn


def test_fixed_size_multidomain_meta_batches_stack_and_carry_each_domain():
    dm = EpisodicDataModule(MultiDomainTasks(domains(), image_size=8), ways=5, shots=2, queries=3, tasks_per_batch=4,
                            train_episodes=8, seed=1)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.support_x.shape == (4, 10, 3, 8, 8) and batch.domains.shape == (4,)
    for task in batch:
        assert set(decode(task.support_x)[0].tolist()) == {int(task.domains)}


def test_variable_episodes_need_one_task_per_meta_batch():
    tasks = MultiDomainTasks(domains(), variable=VariableEpisodes(max_ways=10, max_support=60), image_size=8)
    dm = EpisodicDataModule(tasks, tasks_per_batch=2, train_episodes=8)
    with pytest.raises(ValueError, match=r"variable ways and shots.*tasks_per_batch must be 1, got 2.*accumulate_grad"):
        dm.setup("fit")
    dm = EpisodicDataModule(tasks, tasks, tasks_per_batch=1, eval_tasks_per_batch=3, train_episodes=8)
    with pytest.raises(ValueError, match="eval_tasks_per_batch must be 1, got 3"):
        dm.setup("fit")
    a, b = (tasks.sample(torch.Generator().manual_seed(i), ways=5, shots=1, queries=1) for i in (0, 1))
    with pytest.raises(ValueError, match=r"Episode\.stack needs episodes of one size.*tasks_per_batch=1"):
        Episode.stack([a, b])


def test_multidomain_refuses_bad_domains_with_the_setting_and_value():
    small = {"few": constant_images(0, 4, 10, 1, 8), "grey": constant_images(1, 30, 20, 1, 8)}
    tasks = MultiDomainTasks(small, variable=VariableEpisodes())
    with pytest.raises(ValueError, match=r"domain 'few' \(train split\) has 4 classes, fewer than .*min_ways=5"):
        tasks.validate(ways=5, shots=1, queries=1, split="train")
    with pytest.raises(ValueError, match=r"domain 'few': ways=5 exceeds the number of classes in the train split \(4"):
        MultiDomainTasks(small).validate(ways=5, shots=1, queries=1, split="train")
    with pytest.raises(ValueError, match=r"differ in size .*pass image_size"):
        MultiDomainTasks(domains())
    with pytest.raises(ValueError, match=r"weights name unknown domains \['cub'\]"):
        MultiDomainTasks(domains(), weights={"cub": 1.0}, image_size=8)
    with pytest.raises(ValueError, match="weights must be finite, non-negative and not all zero"):
        MultiDomainTasks(domains(), weights={"grey": -1.0}, image_size=8)
    rgba = {"rgba": TensorDataset(torch.zeros(10, 4, 8, 8), torch.arange(10)), "rgb": domains()["small"]}
    with pytest.raises(ValueError, match=r"channels=3, but domains \{'rgba': 4\}"):
        MultiDomainTasks(rgba, channels=3)


def test_optional_domain_whose_files_are_absent_is_left_out_with_a_warning(tmp_path):
    from lightning_meta.data import MiniImageNet

    def absent() -> MiniImageNet:
        return MiniImageNet(tmp_path, "train")

    with pytest.warns(UserWarning, match=r"optional domain 'mini_imagenet' left out: MiniImageNet found no copy"):
        tasks = MultiDomainTasks({"grey": domains()["grey"]}, optional_domains={"mini_imagenet": absent},
                                 weights={"grey": 1.0, "mini_imagenet": 2.0})  # fmt: skip
    assert tasks.names == ("grey",) and tasks.probabilities.tolist() == [1.0]


# ---------------------------------------------------------------------------------- datamodule guarantees
def batches(loader) -> list[dict]:
    return [fingerprint(b) for b in loader]


def test_variable_episodes_are_a_pure_function_of_seed_stage_epoch_and_index():
    dm = variable_datamodule()
    dm.setup("fit")
    dataset: EpisodeDataset = dm.train_dataloader().dataset
    first, again = dataset[(0, (5,))], dm.train_dataloader().dataset[(0, (5,))]
    for name in ("support_x", "support_y", "query_x", "query_y", "domains"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    other = variable_datamodule()
    other.setup("fit")
    assert batches(dm.train_dataloader()) == batches(other.train_dataloader())
    sampler = dm.train_dataloader().sampler
    epoch0 = batches(dm.train_dataloader())
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    assert batches(loader) != epoch0 and sampler.epoch == 0
    assert batches(dm.val_dataloader()) == batches(dm.val_dataloader())  # fixed evaluation episodes
    assert len({b["ways"] for b in epoch0}) > 1 and len({b["domains"][0] for b in epoch0}) > 1
    reseeded = variable_datamodule(seed=4)
    reseeded.setup("fit")
    assert batches(reseeded.train_dataloader()) != epoch0


def test_per_domain_accuracy_is_logged_and_averages_to_the_overall_accuracy():
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(in_channels=3, hidden=8, image_size=16))
    dm = variable_datamodule()
    (metrics,) = quiet_trainer().validate(learner, datamodule=dm, verbose=False)
    per_domain = {k: v for k, v in metrics.items() if k.startswith("val/acc/")}
    dm.setup("validate")
    counts = {}
    for batch in dm.val_dataloader():
        name = batch.domain_names[int(batch.domains[0])]
        counts[name] = counts.get(name, 0) + 1
    assert set(per_domain) == {f"val/acc/{name}" for name in counts}
    weighted = sum(per_domain[f"val/acc/{name}"] * n for name, n in counts.items()) / sum(counts.values())
    assert weighted == pytest.approx(metrics["val/acc"], abs=1e-6)
    assert all(f"val/acc_ci95/{name}" in metrics for name in counts)


@pytest.mark.integration
def test_variable_episodes_same_with_two_workers():
    zero, two = variable_datamodule(), variable_datamodule(num_workers=2)
    zero.setup("fit")
    two.setup("fit")
    assert batches(zero.train_dataloader()) == batches(two.train_dataloader())
    assert batches(zero.val_dataloader()) == batches(two.val_dataloader())


@pytest.mark.integration
def test_ddp_ranks_get_distinct_variable_episodes_that_together_are_the_single_process_ones(tmp_path):
    cmd = [sys.executable, "-m", "tests.helpers.multidomain", "--devices", "2", "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(rank0) == len(rank1) == 12  # 12 episodes per epoch, one per step, 2 ranks, 2 epochs
    dm = variable_datamodule()
    dm.setup("fit")
    dataset = dm.train_dataloader().dataset
    for r, seen in enumerate((rank0, rank1)):
        for step, record in enumerate(seen):
            epoch, b = divmod(step, 6)
            assert record["epoch"] == epoch and record["ids"] == [2 * b + r]  # rank-distinct, in the global order
            expected = fingerprint(dataset[(epoch, (2 * b + r,))])
            assert {k: record[k] for k in expected} == expected


@pytest.mark.integration
def test_per_domain_accuracy_under_ddp_equals_one_process(tmp_path):
    """6 validation episodes dealt to 2 ranks: every rank logs the per-domain figures of all 6, as one process does."""
    for devices in (2, 1):
        cmd = [sys.executable, "-m", "tests.helpers.multidomain", "--validate", "--devices", str(devices),
               "--out", str(tmp_path)]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    single = json.loads((tmp_path / "validate1-rank0.json").read_text())
    assert any(key.startswith("val/acc/") for key in single)
    for rank in (0, 1):
        ranked = json.loads((tmp_path / f"validate2-rank{rank}.json").read_text())
        assert ranked.keys() == single.keys()
        for key, value in single.items():
            assert ranked[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key  # NaN: one-episode interval


@pytest.mark.integration
@pytest.mark.parametrize("stop_step", [5, 15])
def test_resumed_multidomain_run_continues_with_the_uninterrupted_episodes(tmp_path, stop_step):
    def trainer(**kwargs) -> L.Trainer:
        return L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, **kwargs)  # fmt: skip

    full = Recorder()
    trainer(enable_checkpointing=False).fit(full, variable_datamodule())
    first = Recorder()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=stop_step, save_top_k=-1)
    trainer(max_steps=stop_step, callbacks=[checkpoint]).fit(first, variable_datamodule())
    path = tmp_path / f"epoch={(stop_step - 1) // 12}-step={stop_step}.ckpt"
    assert path.exists(), sorted(os.listdir(tmp_path))
    second = Recorder()
    trainer(enable_checkpointing=False).fit(second, variable_datamodule(), ckpt_path=path)
    assert first.seen + second.seen == full.seen and len(full.seen) == 24


# ------------------------------------------------------------------------------------------- every learner
def variable_learners() -> dict:
    """Every learner. Those with a fixed output layer (the gradient learners' head, SNAIL's label input and logits)
    get as many outputs as the most ways (10 here); each episode uses the first ``ways`` of them."""
    from lightning_meta.learners import ANIL, IMAML, MAML, R2D2, SNAIL, MatchingNet, MetaSGD, Reptile

    def conv(out: int | None = None) -> Conv4:
        return Conv4(in_channels=3, hidden=8, image_size=16, out_features=out)

    return {
        "maml": lambda: MAML(conv(10), inner_loop=InnerLoop(lr=0.05, steps=1, vectorize="loop"), lr=0.01),
        "anil": lambda: ANIL(conv(10), inner_loop=InnerLoop(lr=0.05, vectorize="loop"), lr=0.01),
        "metasgd": lambda: MetaSGD(conv(10), inner_loop=InnerLoop(lr=0.05, vectorize="loop"), lr=0.01),
        "reptile": lambda: Reptile(conv(10), inner_loop=InnerLoop(lr=0.05, steps=1, vectorize="loop"), lr=0.5),
        "imaml": lambda: IMAML(conv(10), inner_loop=InnerLoop(lr=0.05, steps=2, vectorize="loop"), cg_steps=2, lr=0.01),
        "protonet": lambda: ProtoNet(conv(), lr=0.01),
        "matchingnet": lambda: MatchingNet(conv(), embedding_dim=32, lr=0.01),
        "r2d2": lambda: R2D2(conv(), lr=0.01),
        "snail": lambda: SNAIL(conv(), ways=10, shots=2, embedding_dim=8, lr=0.01),
    }


@pytest.mark.parametrize("name", list(variable_learners()))
def test_every_learner_trains_and_evaluates_on_variable_multidomain_episodes(name):
    torch.manual_seed(0)
    learner = variable_learners()[name]()
    before = [p.detach().clone() for p in learner.parameters()]
    seen: list[tuple[int, int]] = []
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=2, num_sanity_val_steps=0)
    datamodule = variable_datamodule()
    trainer.fit(learner, datamodule)
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.parameters(), strict=True))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0
    for batch in list(datamodule.train_dataloader())[:3]:  # the episodes it trained on varied in ways and shots
        seen.append((batch.ways, batch.support_x.shape[1]))
    assert len({ways for ways, _ in seen}) > 1 and len(set(seen)) > 1


def test_multidomain_over_the_benchmark_adapters_cifar_fs_and_cub(tmp_path, data_root):
    """The real adapters (on copies in their official layouts) as domains: 32px CIFAR-FS and 84px CUB at 32px."""
    from lightning_meta.data import CIFARFS, CUB
    from tests.helpers.benchmark_fixtures import write_cifar100, write_cub

    cifar = CIFARFS(write_cifar100(tmp_path, data_root, per_class=(3, 1)), "train", check_counts=False)
    cub = CUB(write_cub(tmp_path, data_root, per_class=2), "train", check_counts=False, cache_dir=tmp_path)
    tasks = MultiDomainTasks({"cifar_fs": cifar, "cub": cub}, variable=VariableEpisodes(max_ways=8), image_size=32)
    dm = EpisodicDataModule(tasks, tasks_per_batch=1, train_episodes=6, seed=0)
    dm.setup("fit")
    names = set()
    for batch in dm.train_dataloader():
        assert batch.support_x.shape[2:] == (3, 32, 32) and 5 <= batch.ways <= 8
        name = batch.domain_names[int(batch.domains[0])]
        names.add(name)
        if name == "cub":  # CUB has 2 images per class here: 1 shot and 1 query each
            assert batch.support_x.shape[1] == batch.query_x.shape[1] == batch.ways
    assert names == {"cifar_fs", "cub"}
