import pickle

import pytest
import torch

from lightning_meta import Episode


def task(i: int) -> Episode:
    return Episode(torch.full((4, 2), float(i)), torch.tensor([0, 0, 1, 1]), torch.full((6, 2), float(i)),
                   torch.tensor([0, 0, 0, 1, 1, 1]), ways=2, task_ids=torch.tensor(i))  # fmt: skip


def test_stack_puts_tasks_on_a_leading_dimension_and_iteration_gives_them_back():
    batch = Episode.stack([task(0), task(1), task(2)])
    assert batch.batched and batch.n_tasks == len(batch) == 3
    assert batch.support_x.shape == (3, 4, 2) and batch.query_y.shape == (3, 6)
    assert batch.task_ids.tolist() == [0, 1, 2]
    for i, t in enumerate(batch):
        assert not t.batched and t.ways == 2 and int(t.task_ids) == i
        assert torch.equal(t.support_x, task(i).support_x)


def test_unbatched_episode_is_one_task():
    t = task(0)
    assert t.n_tasks == 1 and list(t) == [t]


def test_to_casts_floating_tensors_only_and_keeps_metadata():
    batch = Episode.stack([task(0), task(1)]).to(torch.float64)
    assert batch.support_x.dtype == torch.float64 and batch.support_y.dtype == torch.long
    assert batch.ways == 2 and batch.batched
    moved = batch.to("cpu", dtype=torch.float16)
    assert moved.query_x.dtype == torch.float16 and moved.query_y.dtype == torch.long


def test_regression_episode_has_no_ways():
    e = Episode(torch.zeros(5, 1), torch.zeros(5, 1), torch.zeros(3, 1), torch.zeros(3, 1))
    assert not e.is_classification and "regression" in repr(e)


def test_episode_pickles_for_dataloader_workers():
    batch = Episode.stack([task(0), task(1)])
    again = pickle.loads(pickle.dumps(batch))
    assert torch.equal(again.support_x, batch.support_x) and again.ways == 2


def test_stack_refuses_empty_and_batched_input():
    with pytest.raises(ValueError, match="at least one episode"):
        Episode.stack([])
    with pytest.raises(ValueError, match="single-task episodes"):
        Episode.stack([Episode.stack([task(0)])])
