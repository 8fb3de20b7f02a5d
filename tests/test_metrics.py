"""EpisodeAccuracy and per_episode_accuracy: the few-shot evaluation protocol (mean accuracy and 95% interval)."""

from __future__ import annotations

import math
import os
import socket
import time
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_meta.metrics import EpisodeAccuracy, EpisodeAccuracyResult, per_episode_accuracy


def meta_batch(n_tasks: int, n_query: int = 15, ways: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Query logits [n_tasks, n_query, ways] and labels [n_tasks, n_query], right about half of the time."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, ways, (n_tasks, n_query), generator=g)
    logits = torch.randn(n_tasks, n_query, ways, generator=g)
    logits[torch.rand(n_tasks, n_query, generator=g) < 0.5] *= 0.1  # some queries keep a random guess
    logits.scatter_add_(2, target.unsqueeze(-1), torch.full((n_tasks, n_query, 1), 0.5))
    return logits, target


def numpy_reference(logits: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, float, float]:
    """Per-episode accuracies, their mean and the 95% interval, computed independently with numpy."""
    predicted = np.argmax(logits.numpy(), axis=-1)
    accuracies = (predicted == target.numpy()).mean(axis=1)
    ci95 = 1.96 * np.std(accuracies, ddof=1) / np.sqrt(len(accuracies))
    return accuracies, float(np.mean(accuracies)), float(ci95)


def test_per_episode_accuracy_matches_numpy_for_logits_and_labels():
    logits, target = meta_batch(7)
    expected, _, _ = numpy_reference(logits, target)
    np.testing.assert_allclose(per_episode_accuracy(logits, target).numpy(), expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(per_episode_accuracy(logits.argmax(-1), target).numpy(), expected, rtol=0, atol=1e-7)
    assert per_episode_accuracy(logits, target).dtype == torch.get_default_dtype()


def test_ci95_equals_numpy_reference_over_the_same_episodes():
    logits, target = meta_batch(600, seed=1)
    accuracies, mean, ci95 = numpy_reference(logits, target)
    assert accuracies.std() > 0.05  # a spread that makes the interval meaningful

    metric = EpisodeAccuracy()
    metric.update(logits, target)
    result = metric.compute()

    assert isinstance(result, EpisodeAccuracyResult)
    assert result.n == 600
    assert result.mean.item() == pytest.approx(mean, abs=1e-6)
    assert result.ci95.item() == pytest.approx(ci95, abs=1e-6)


CHUNKS = (slice(0, 8), slice(8, 9), slice(9, 23))


def test_mean_over_several_updates_equals_mean_over_all_episodes():
    logits, target = meta_batch(23, seed=2)
    metric = EpisodeAccuracy()
    for chunk in CHUNKS:  # meta-batches of uneven sizes, one of a single task
        metric.update(logits[chunk], target[chunk])
    _, mean, ci95 = numpy_reference(logits, target)
    result = metric.compute()

    assert metric.update_count == 3
    assert result.n == 23
    assert result.mean.item() == pytest.approx(mean, abs=1e-6)
    assert result.ci95.item() == pytest.approx(ci95, abs=1e-6)
    # The test can tell the right answer from a mean of the three meta-batch means.
    accuracies, _, _ = numpy_reference(logits, target)
    mean_of_batch_means = np.mean([accuracies[c].mean() for c in CHUNKS])
    assert abs(mean_of_batch_means - mean) > 1e-3

    metric.reset()
    metric.update(logits[:3], target[:3])
    assert metric.compute().n == 3


def test_one_episode_gives_nan_interval_and_no_update_gives_nan_mean():
    metric = EpisodeAccuracy()
    metric.update(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[0, 1, 0, 1]]))
    result = metric.compute()
    assert result.n == 1 and result.mean.item() == pytest.approx(0.75) and math.isnan(result.ci95.item())

    empty = EpisodeAccuracy()
    with pytest.warns(UserWarning, match="called before the ``update``"):
        result = empty.compute()
    assert result.n == 0 and math.isnan(result.mean.item()) and math.isnan(result.ci95.item())


def test_metric_declares_torchmetrics_conventions():
    assert EpisodeAccuracy.full_state_update is False
    assert EpisodeAccuracy.higher_is_better is True
    assert EpisodeAccuracy.is_differentiable is False
    assert EpisodeAccuracy()._reductions["accuracies"].__name__ == "dim_zero_cat"


@pytest.mark.parametrize(
    ("preds", "target", "match"),
    [
        pytest.param(torch.zeros(3, 4, 5), torch.zeros(3, 5, dtype=torch.long), r"\[3, 5, ways >= 1\].*got \(3, 4, 5\)",
                     id="logits-query-mismatch"),
        pytest.param(torch.zeros(3, 4, 0), torch.zeros(3, 4, dtype=torch.long), r"ways >= 1.*got \(3, 4, 0\)",
                     id="logits-zero-ways"),
        pytest.param(torch.zeros(2, 4, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long),
                     r"preds labels must have the shape of target.*\(3, 4\), got \(2, 4\)", id="labels-task-mismatch"),
        pytest.param(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.long), r"integer class labels, got dtype",
                     id="float-labels"),
        pytest.param(torch.zeros(3, 4, 5, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long),
                     r"must be float logits", id="integer-logits"),
        pytest.param(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long),
                     r"target must be query labels of shape \[n_tasks, n_query\], got shape \(4,\)", id="unbatched"),
        pytest.param(torch.zeros(3, 4, 5), torch.zeros(3, 4), r"target must hold integer class labels",
                     id="float-target"),
        pytest.param(torch.zeros(3, 4, 5, 2), torch.zeros(3, 4, dtype=torch.long),
                     r"preds must be logits .* got shape \(3, 4, 5, 2\)", id="preds-too-many-dims"),
        pytest.param(torch.zeros(0, 4, 5), torch.zeros(0, 4, dtype=torch.long), r"at least one task",
                     id="empty-meta-batch"),
    ],
)  # fmt: skip
def test_bad_shapes_and_dtypes_raise_value_error_naming_the_argument(preds, target, match):
    with pytest.raises(ValueError, match=match):
        per_episode_accuracy(preds, target)
    metric = EpisodeAccuracy()
    with pytest.raises(ValueError, match=r"EpisodeAccuracy.update: .*" + match):
        metric.update(preds, target)
    assert metric.accuracies == []  # a rejected batch leaves no trace


# --------------------------------------------------------------------------------------------------- DDP
N_DDP_EPISODES = 41  # odd, so the two ranks hold different numbers of episodes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo's traffic on the loopback interface
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        logits, target = meta_batch(N_DDP_EPISODES, seed=3)
        # Rank 0 takes the first 21 episodes in two updates, rank 1 the last 20 in three.
        cuts = [(0, 5), (5, 21)] if rank == 0 else [(21, 30), (30, 31), (31, 41)]
        metric = EpisodeAccuracy()
        for start, stop in cuts:
            metric.update(logits[start:stop], target[start:stop])
        result = metric.compute()
        local = sum(stop - start for start, stop in cuts)
        # After compute the metric still holds only this rank's episodes (torchmetrics restores the local state).
        metric.update(logits[:1], target[:1])
        after = metric.compute()
        # A rank that saw no episode (fewer evaluation batches than processes) still joins the gather.
        lopsided = EpisodeAccuracy()
        if rank == 0:
            lopsided.update(logits, target)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchmetrics: compute before update on rank 1
            lopsided_result = lopsided.compute()
        torch.save(
            {
                "mean": result.mean,
                "ci95": result.ci95,
                "n": result.n,
                "local": local,
                "n_after": after.n,
                "lopsided": tuple(lopsided_result),
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_compute_the_single_process_value_on_all_episodes(tmp_path):
    context = mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 120  # a hung collective must fail the test, not the CI run
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process gloo run did not finish within 120 s")

    logits, target = meta_batch(N_DDP_EPISODES, seed=3)
    single = EpisodeAccuracy()
    single.update(logits, target)
    expected = single.compute()
    _, numpy_mean, numpy_ci95 = numpy_reference(logits, target)

    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert [r["local"] for r in results] == [21, 20]
    for r in results:
        assert r["n"] == N_DDP_EPISODES
        assert r["mean"].item() == pytest.approx(expected.mean.item(), abs=1e-6)
        assert r["ci95"].item() == pytest.approx(expected.ci95.item(), abs=1e-6)
        assert r["mean"].item() == pytest.approx(numpy_mean, abs=1e-6)
        assert r["ci95"].item() == pytest.approx(numpy_ci95, abs=1e-6)
        assert r["n_after"] == N_DDP_EPISODES + 2  # both ranks added one episode
        mean, ci95, n = r["lopsided"]
        assert n == N_DDP_EPISODES
        assert mean.item() == pytest.approx(expected.mean.item(), abs=1e-6)
        assert ci95.item() == pytest.approx(expected.ci95.item(), abs=1e-6)
