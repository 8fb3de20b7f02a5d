"""learn2learn tasksets in our datamodule: learn2learn's support/query split, seeding, pools, ranks, real Omniglot."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_meta import InnerLoop
from lightning_meta.data import EpisodicDataModule, Learn2LearnTasks
from lightning_meta.data.learn2learn import split_task, support_mask
from lightning_meta.data.omniglot import load_omniglot_images
from lightning_meta.data.sampler import EpisodeDataset, EpisodeSampler, episode_generator
from lightning_meta.learners import MAML
from tests.helpers.learn2learn import l2l, needs_l2l

if l2l is not None:
    from learn2learn.data.transforms import ConsecutiveLabels, FusedNWaysKShots, KShots, LoadData, NWays, RemapLabels


def identified_dataset(n_classes: int = 12, per_class: int = 8) -> TensorDataset:
    """Examples whose single feature is their own index, so a task's examples can be traced back."""
    return TensorDataset(
        torch.arange(n_classes * per_class, dtype=torch.float32).unsqueeze(1),
        torch.arange(n_classes).repeat_interleave(per_class),
    )


def taskset(dataset, *, ways: int, k: int, num_tasks: int = -1, fused: bool = False, consecutive: bool = True):
    """A Taskset built as learn2learn's examples build theirs."""
    meta = dataset if isinstance(dataset, l2l.data.MetaDataset) else l2l.data.MetaDataset(dataset)
    sizes = [FusedNWaysKShots(meta, n=ways, k=k)] if fused else [NWays(meta, n=ways), KShots(meta, k=k)]
    transforms = [*sizes, LoadData(meta), RemapLabels(meta)]
    if consecutive:
        transforms.append(ConsecutiveLabels(meta))
    return l2l.data.Taskset(meta, task_transforms=transforms, num_tasks=num_tasks)


def by_label(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(y, stable=True)
    return x[order], y[order]


def global_states() -> tuple:
    return random.getstate(), np.random.get_state()[1].tolist(), torch.random.get_rng_state().tolist()


# --------------------------------------------------------------------------------------------- the split
@needs_l2l
@pytest.mark.parametrize("fused", [False, True], ids=["NWays+KShots", "FusedNWaysKShots"])
@pytest.mark.parametrize("consecutive", [False, True], ids=["as-drawn", "ConsecutiveLabels"])
@pytest.mark.parametrize("shots", [1, 3])
def test_alternate_split_is_the_split_of_learn2learns_maml_example(fused, consecutive, shots):
    ways = 5
    tasks = taskset(identified_dataset(), ways=ways, k=2 * shots, fused=fused, consecutive=consecutive)
    random.seed(shots)
    for _ in range(5):
        data, labels = tasks.sample()
        # examples/vision/maml_omniglot.py, fast_adapt():
        adaptation = np.zeros(data.size(0), dtype=bool)
        adaptation[np.arange(shots * ways) * 2] = True
        evaluation = torch.from_numpy(~adaptation)
        adaptation = torch.from_numpy(adaptation)

        episode = split_task(data, labels, ways=ways, shots=shots, queries=shots)
        support_x, support_y = by_label(data[adaptation], labels[adaptation])
        query_x, query_y = by_label(data[evaluation], labels[evaluation])
        assert torch.equal(episode.support_x, support_x) and torch.equal(episode.support_y, support_y)
        assert torch.equal(episode.query_x, query_x) and torch.equal(episode.query_y, query_y)


@needs_l2l
def test_first_split_is_the_split_of_learn2learns_protonet_example():
    ways, shot, query_num = 4, 2, 3
    tasks = taskset(identified_dataset(), ways=ways, k=shot + query_num, consecutive=False)
    random.seed(0)
    for _ in range(5):
        data, labels = tasks.sample()
        # examples/vision/protonet_miniimagenet.py, fast_adapt() (with a stable sort: torch.sort's order is not)
        sort = torch.sort(labels, stable=True)
        data, labels = data[sort.indices], labels[sort.indices]
        support_indices = np.zeros(data.size(0), dtype=bool)
        selection = np.arange(ways) * (shot + query_num)
        for offset in range(shot):
            support_indices[selection + offset] = True
        query_indices = torch.from_numpy(~support_indices)
        support_indices = torch.from_numpy(support_indices)

        episode = split_task(data, labels, ways=ways, shots=shot, queries=query_num, support_positions="first")
        assert torch.equal(episode.support_x, data[support_indices])
        assert torch.equal(episode.query_x, data[query_indices])
        assert torch.equal(episode.query_y, labels[query_indices])


def test_alternate_split_gives_the_surplus_to_the_larger_set():
    assert support_mask(1, 3).int().tolist() == [1, 0, 0, 0]
    assert support_mask(3, 1).int().tolist() == [1, 0, 1, 1]
    assert support_mask(2, 2).int().tolist() == [1, 0, 1, 0]
    data, labels = torch.arange(8.0), torch.tensor([7, 7, 7, 7, 3, 3, 3, 3])  # labels need not be 0..ways-1
    episode = split_task(data, labels, ways=2, shots=3, queries=1)
    assert episode.support_x.tolist() == [4, 6, 7, 0, 2, 3] and episode.support_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert episode.query_x.tolist() == [5, 1] and episode.query_y.tolist() == [0, 1]


def test_split_rejects_tasks_of_another_size_with_the_settings_named():
    data, labels = torch.zeros(6, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match=r"ways=2, but the learn2learn task holds 3 classes"):
        split_task(data, labels, ways=2, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"shots \+ queries = 1 \+ 2 = 3, but .* \[2, 2, 2\] examples per class"):
        split_task(data, labels, ways=3, shots=1, queries=2)
    with pytest.raises(ValueError, match="integer class labels"):
        split_task(data, labels.float(), ways=3, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"data of shape \(5, 2\) and labels of shape \(6,\)"):
        split_task(data[:5], labels, ways=3, shots=1, queries=1)


# --------------------------------------------------------------------------------------------- the adapter
@needs_l2l
@pytest.mark.parametrize("num_tasks", [-1, 50], ids=["fresh-tasks", "pool"])
def test_tasks_are_a_pure_function_of_the_generator_and_leave_global_random_state_alone(num_tasks):
    tasks = Learn2LearnTasks(taskset(identified_dataset(), ways=3, k=4, num_tasks=num_tasks))
    before = global_states()
    first = [tasks.sample(episode_generator(0, "train", 0, i), ways=3, shots=2, queries=2) for i in range(4)]
    assert global_states() == before
    random.seed(123)  # the caller's global state has no say in the tasks
    again = [tasks.sample(episode_generator(0, "train", 0, i), ways=3, shots=2, queries=2) for i in range(4)]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert len({tuple(t.support_x.flatten().tolist()) for t in first}) == 4  # different seeds, different tasks


@needs_l2l
def test_a_pool_is_the_same_whatever_order_processes_draw_it_in():
    """learn2learn fills a num_tasks pool lazily from the global random state, so the content of pool task i depends
    on what was drawn before; here each pool task's description has a seed of its own."""
    dataset = identified_dataset()
    forward = Learn2LearnTasks(taskset(dataset, ways=3, k=2, num_tasks=8))
    backward = Learn2LearnTasks(taskset(dataset, ways=3, k=2, num_tasks=8))
    seeds = list(range(30))
    drawn_forward = {i: forward.sample(episode_generator(0, "train", 0, i), ways=3, shots=1, queries=1) for i in seeds}
    drawn_backward = {
        i: backward.sample(episode_generator(0, "train", 0, i), ways=3, shots=1, queries=1) for i in reversed(seeds)
    }
    for i in seeds:
        assert torch.equal(drawn_forward[i].support_x, drawn_backward[i].support_x), i
    assert len(forward.taskset.sampled_descriptions) <= 8
    distinct = {tuple(t.support_x.flatten().tolist() + t.query_x.flatten().tolist()) for t in drawn_forward.values()}
    assert len(distinct) <= 8  # 30 episodes drawn from a pool of 8 tasks


@needs_l2l
def test_validate_names_the_settings_and_leaves_the_pool_cache_empty():
    tasks = Learn2LearnTasks(taskset(identified_dataset(), ways=5, k=2, num_tasks=10))
    tasks.validate(ways=5, shots=1, queries=1, split="train")
    assert len(tasks.taskset.sampled_descriptions) == 0
    with pytest.raises(ValueError, match=r"^ways=3, but the learn2learn taskset of the train split draws 5-way"):
        tasks.validate(ways=3, shots=1, queries=1, split="train")
    with pytest.raises(ValueError, match=r"^eval_shots \+ eval_queries = 1 \+ 15 = 16, but .* val split draws 2 exam"):
        tasks.validate(ways=5, shots=1, queries=15, split="val")
    data = EpisodicDataModule(tasks, ways=5, shots=1, queries=15)
    with pytest.raises(ValueError, match=r"k of its KShots/FusedNWaysKShots to 16"):
        data.setup("fit")


def test_rejects_what_is_not_a_taskset_and_bad_settings():
    with pytest.raises(TypeError, match=r"sample\(\) method .* got TensorDataset"):
        Learn2LearnTasks(identified_dataset())

    class Toy:
        def sample(self):
            return torch.zeros(2, 1), torch.tensor([0, 1]), "extra"

    with pytest.raises(ValueError, match=r"support_positions must be one of \('alternate', 'first'\), got 'last'"):
        Learn2LearnTasks(Toy(), support_positions="last")
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        Learn2LearnTasks(Toy(), seed=-1)
    with pytest.raises(ValueError, match=r"return one task as \(data, labels\); got tuple of length 3"):
        Learn2LearnTasks(Toy()).sample(torch.Generator(), ways=2, shots=1, queries=0)


@needs_l2l
def test_ranks_draw_distinct_tasks_that_together_are_one_process_with_twice_the_meta_batch():
    tasks = Learn2LearnTasks(taskset(identified_dataset(), ways=3, k=4, num_tasks=-1))
    dataset = EpisodeDataset(tasks, stage="train", seed=7, ways=3, shots=2, queries=2)
    single = [dataset[key] for key in EpisodeSampler(8, 4, train=True)]
    ranks = [[dataset[key] for key in EpisodeSampler(8, 2, train=True, rank=r, world_size=2)] for r in range(2)]
    for step, batch in enumerate(single):
        together = torch.cat([ranks[0][step].support_x, ranks[1][step].support_x])
        assert torch.equal(together, batch.support_x)
        assert not torch.equal(ranks[0][step].support_x, ranks[1][step].support_x)


@needs_l2l
def test_dataloader_workers_give_the_same_episodes_as_the_main_process():
    dataset = identified_dataset()
    batches = {}
    for workers in (0, 2):
        tasks = Learn2LearnTasks(taskset(dataset, ways=3, k=2, num_tasks=6))  # a pool: each worker fills its own
        data = EpisodicDataModule(tasks, ways=3, shots=1, queries=1, tasks_per_batch=2, train_episodes=8,
                                  num_workers=workers)  # fmt: skip
        data.setup("fit")
        batches[workers] = list(data.train_dataloader())
    for a, b in zip(batches[0], batches[2], strict=True):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)


# --------------------------------------------------------------------------------------------- real Omniglot
@pytest.fixture(scope="module")
def omniglot_meta(data_root: Path, omniglot_cache: Path):
    """learn2learn's MetaDataset over real Omniglot drawings: the official minimal background set (136 characters,
    20 drawings each), decoded by our loader at 28x28 with ink 1, as learn2learn's Omniglot benchmark prepares them."""
    if l2l is None:
        pytest.skip("learn2learn missing: run scripts/install_learn2learn.sh")
    drawings = load_omniglot_images(data_root / "omniglot" / "images_background_small1.zip", cache_dir=omniglot_cache)
    images = drawings.images.unsqueeze(1).float().div(255)
    dataset = TensorDataset(images, drawings.character)
    # Bookkeeping from the labels we already have (MetaDataset would otherwise read every example once).
    return l2l.data.MetaDataset(dataset, indices_to_labels=dict(enumerate(drawings.character.tolist())))


def omniglot_split(meta, classes: list[int], *, ways: int, shots: int):
    """A split as learn2learn's benchmarks build one, but with the transforms on the split's own dataset: 0.2.0's
    get_tasksets('omniglot') builds them on the whole dataset, so its train taskset draws every class."""
    split = l2l.data.FilteredMetaDataset(meta, labels=classes)
    return taskset(split, ways=ways, k=2 * shots, fused=True)


@needs_l2l
def test_maml_fits_learn2learn_omniglot_tasks_with_learn2learns_omniglotcnn(omniglot_meta, tmp_path):
    ways, shots = 5, 1
    classes = list(range(136))
    random.Random(0).shuffle(classes)
    train = Learn2LearnTasks(omniglot_split(omniglot_meta, classes[:100], ways=ways, shots=shots))
    val = Learn2LearnTasks(omniglot_split(omniglot_meta, classes[100:], ways=ways, shots=shots))
    data = EpisodicDataModule(train, val, ways=ways, shots=shots, queries=shots, tasks_per_batch=2,
                              train_episodes=6, eval_episodes=4)  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch.support_x.shape == (2, ways * shots, 1, 28, 28) and batch.query_y.shape == (2, ways * shots)
    ink = batch.support_x.flatten(2).sum(-1)  # real drawings: varied, in [0, 1] with ink 1
    assert len(set(ink.flatten().tolist())) > 1 and 0.0 <= float(batch.support_x.min()) <= 1.0

    torch.manual_seed(0)
    model = l2l.vision.models.OmniglotCNN(output_size=ways, hidden_size=16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner = MAML(model, inner_loop=InnerLoop(lr=0.4, steps=1, vectorize="loop"), lr=1e-3)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, default_root_dir=tmp_path, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(learner, data)
    assert trainer.global_step == 3
    assert all(torch.isfinite(v) for v in trainer.callback_metrics.values())
    assert {"train/loss", "val/loss", "val/acc"} <= set(trainer.callback_metrics)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


@needs_l2l
def test_learn2learn_0_2_0_omniglot_benchmark_transforms_draw_from_every_class(omniglot_meta):
    """Why the fit above builds its own splits: the code of get_tasksets('omniglot') (transforms built on the whole
    MetaDataset, Taskset on the filtered one) gives a 'train' taskset that draws validation and test classes too."""
    train_classes = set(range(100))
    train_dataset = l2l.data.FilteredMetaDataset(omniglot_meta, labels=sorted(train_classes))
    as_in_benchmark = l2l.data.Taskset(
        train_dataset,
        task_transforms=[FusedNWaysKShots(omniglot_meta, n=5, k=2), LoadData(omniglot_meta)],
    )
    as_it_should_be = l2l.data.Taskset(
        train_dataset,
        task_transforms=[FusedNWaysKShots(train_dataset, n=5, k=2), LoadData(train_dataset)],
    )
    random.seed(0)
    benchmark_labels = {int(y) for _ in range(40) for y in as_in_benchmark.sample()[1]}
    assert benchmark_labels - train_classes  # classes outside the split
    split_labels = {int(y) for _ in range(40) for y in as_it_should_be.sample()[1]}
    assert split_labels <= train_classes


@needs_l2l
def test_learn2learn_0_2_0_random_class_rotation_turns_every_class_of_a_task_alike():
    """Its docstring says each class gets its own rotation, but every lambda it appends reads the loop's last
    ``rotation``: all classes of a task turn by the same angle (stated in the migration guide)."""
    marked = torch.zeros(1, 5, 5)
    marked[0, 0, 1] = 1.0  # one ink pixel, off the centre: its position tells the angle
    meta = l2l.data.MetaDataset(
        TensorDataset(marked.expand(40, 1, 5, 5).clone(), torch.arange(20).repeat_interleave(2))
    )
    rotation = l2l.vision.transforms.RandomClassRotation(meta, [0.0, 90.0, 180.0, 270.0])
    tasks = l2l.data.Taskset(meta, task_transforms=[NWays(meta, n=5), KShots(meta, k=2), LoadData(meta), rotation])
    random.seed(0)
    for _ in range(10):
        images = tasks.sample()[0]
        positions = {tuple(torch.nonzero(image[0] > 0.5)[0].tolist()) for image in images}
        assert len(positions) == 1  # five classes, one angle


@needs_l2l
def test_a_raw_learn2learn_taskset_is_refused_with_the_adapter_named():
    dataset = l2l.data.MetaDataset(TensorDataset(torch.randn(40, 2), torch.arange(8).repeat_interleave(5)))
    transforms = [l2l.data.transforms.NWays(dataset, 2), l2l.data.transforms.KShots(dataset, 2),
                  l2l.data.transforms.LoadData(dataset)]  # fmt: skip
    data = EpisodicDataModule(l2l.data.TaskDataset(dataset, transforms), ways=2, shots=1, queries=1,
                              tasks_per_batch=1, train_episodes=2)  # fmt: skip
    with pytest.raises(TypeError, match=r"train= got a learn2learn TaskDataset: wrap it as train=Learn2LearnTasks"):
        data.tasks("train")
