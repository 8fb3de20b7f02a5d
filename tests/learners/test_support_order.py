"""Which learners see the order of the support set (why episodes shuffle it: see tests/data/test_sampler.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from lightning_meta import Episode, InnerLoop
from lightning_meta.learners import ANIL, MAML, R2D2, SNAIL, MatchingNet, MetaLearner, MetaSGD, ProtoNet, Reptile
from tests.helpers.synthetic import random_meta_batch

WAYS, SHOTS, DIM = 3, 2, 6


def body_and_head() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, WAYS)).double()


def embedding() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, 8)).double()


LOOP = {"lr": 0.1, "steps": 3, "vectorize": "loop"}
ORDER_FREE: dict[str, Callable[[], MetaLearner]] = {
    "maml": lambda: MAML(body_and_head(), inner_loop=InnerLoop(**LOOP)),
    "anil": lambda: ANIL(body_and_head(), head="2", inner_loop=InnerLoop(**LOOP)),
    "metasgd": lambda: MetaSGD(body_and_head(), inner_loop=InnerLoop(**LOOP)),
    "reptile": lambda: Reptile(body_and_head(), inner_loop=InnerLoop(**LOOP), transductive=False),
    "protonet": lambda: ProtoNet(embedding()),
    "matchingnet": lambda: MatchingNet(embedding()),
    "r2d2": lambda: R2D2(embedding()),
}
ORDER_SENSITIVE: dict[str, Callable[[], MetaLearner]] = {
    "snail": lambda: SNAIL(embedding(), ways=WAYS, shots=SHOTS, embedding_dim=8).double(),
    "matchingnet_fce": lambda: MatchingNet(embedding(), full_context_embeddings=True, embedding_dim=8).double(),
}


def predictions_in_two_orders(make: Callable[[], MetaLearner]) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    learner = make().eval()
    episode = random_meta_batch(2, WAYS, SHOTS, queries=4, dim=DIM, seed=1)
    order = torch.stack([torch.randperm(WAYS * SHOTS, generator=torch.Generator().manual_seed(t)) for t in range(2)])
    shuffled = Episode(
        episode.support_x.gather(1, order.unsqueeze(-1).expand_as(episode.support_x)),
        episode.support_y.gather(1, order),
        episode.query_x,
        episode.query_y,
        ways=WAYS,
        batched=True,
    )
    assert not torch.equal(shuffled.support_y, episode.support_y)
    return learner(episode).detach(), learner(shuffled).detach()


@pytest.mark.parametrize("name", list(ORDER_FREE))
def test_learner_predicts_the_same_whatever_the_support_order(name):
    first, second = predictions_in_two_orders(ORDER_FREE[name])
    torch.testing.assert_close(first, second, rtol=1e-10, atol=1e-10)  # float64: only summation order differs


@pytest.mark.parametrize("name", list(ORDER_SENSITIVE))
def test_sequence_reading_learner_sees_the_support_order(name):
    """SNAIL's causal sequence and FCE's bidirectional LSTM read the support set in order: the episodes' shuffle
    (EpisodeDataset) is what keeps them from learning a class from a position."""
    first, second = predictions_in_two_orders(ORDER_SENSITIVE[name])
    assert (first - second).abs().max() > 1e-6
