"""MatchingNet: probabilities against a hand-written cosine attention, the FCE option, a short real fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_meta import Episode
from lightning_meta.data import EpisodicDataModule
from lightning_meta.learners import MatchingNet
from lightning_meta.models import Conv4
from tests.helpers.synthetic import blobs, random_meta_batch
from tests.helpers.trainers import metrics_before_and_after_fit


def mlp(dim: int = 16, out: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, out))


def hand_attention(backbone: nn.Module, episode: Episode, scale: float) -> torch.Tensor:
    """P(y=k|x) = sum_i softmax_i(scale * cos(f(x), g(x_i))) [y_i = k], one query at a time."""
    out = torch.zeros(episode.n_tasks, episode.query_x.shape[1], episode.ways, dtype=torch.float64)
    for t, task in enumerate(episode):
        support, queries = backbone(task.support_x), backbone(task.query_x)
        for q in range(len(queries)):
            cosines = torch.stack([queries[q] @ s / (queries[q].norm() * s.norm()) for s in support])
            weights = torch.exp(scale * cosines) / torch.exp(scale * cosines).sum()
            for i, label in enumerate(task.support_y.tolist()):
                out[t, q, label] += weights[i]
    return out


@pytest.mark.parametrize("scale", [1.0, 7.0])
def test_matchingnet_probabilities_match_hand_written_cosine_attention(scale):
    torch.manual_seed(0)
    backbone = mlp(6, 5).double()
    learner = MatchingNet(backbone, scale=scale)
    episode = random_meta_batch(n_tasks=3, ways=4, shots=3, queries=2, dim=6)
    with torch.no_grad():
        logits = learner(episode)
        expected = hand_attention(backbone, episode, scale)
    assert logits.shape == (3, 8, 4)
    torch.testing.assert_close(logits.exp(), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(logits.softmax(-1), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_matchingnet_confidence_with_non_negative_embeddings_is_bounded_as_documented(scale):
    # The best case for a query of class 0 with non-negative embeddings: cosine 1 to its own support example and 0
    # to the other four; P(class 0) can go no higher than exp(scale) / (exp(scale) + 4).
    learner = MatchingNet(nn.Identity(), scale=scale)
    support = torch.eye(5)
    task = Episode(support, torch.arange(5), support[:1], torch.zeros(1, dtype=torch.long), ways=5)
    p_correct = learner(Episode.stack([task]))[0, 0, 0].exp()
    bound = torch.exp(torch.tensor(scale)) / (torch.exp(torch.tensor(scale)) + 4)
    torch.testing.assert_close(p_correct, bound)
    assert (p_correct < 0.41) if scale == 1.0 else (p_correct > 0.999)


def test_matchingnet_full_context_embeddings_run_change_the_output_and_get_gradients():
    torch.manual_seed(0)
    backbone = mlp(6, 5).double()
    plain = MatchingNet(backbone)
    fce = MatchingNet(backbone, full_context_embeddings=True, embedding_dim=5, fce_steps=3).double()
    episode = random_meta_batch(n_tasks=2, ways=3, shots=2, queries=4, dim=6)
    loss, logits = fce.meta_loss(episode)
    assert logits.shape == (2, 12, 3)
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(2, 12, dtype=torch.float64))
    assert not torch.allclose(logits, plain(episode))
    loss.backward()
    for name in ("support_lstm", "query_lstm"):
        grads = [p.grad for p in getattr(fce, name).parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name


def test_matchingnet_fce_meta_batch_equals_tasks_one_by_one():
    torch.manual_seed(0)
    learner = MatchingNet(mlp(6, 5), full_context_embeddings=True, embedding_dim=5).double()
    episode = random_meta_batch(n_tasks=3, ways=3, shots=2, queries=2, dim=6, seed=2)
    with torch.no_grad():
        batched = learner(episode)
        one_by_one = torch.cat([learner(Episode.stack([task])) for task in episode])
    torch.testing.assert_close(batched, one_by_one)


def test_matchingnet_reads_embedding_dim_from_a_models_backbone():
    assert MatchingNet(Conv4(hidden=8), full_context_embeddings=True).query_lstm.hidden_size == 8
    assert MatchingNet(Conv4(hidden=8, out_features=3), full_context_embeddings=True).query_lstm.hidden_size == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"full_context_embeddings": True}, r"full_context_embeddings=True needs embedding_dim.*got embedding_dim=None"),
     ({"fce_steps": 0}, r"fce_steps must be a positive integer, got 0"),
     ({"scale": -2.0}, r"scale must be a positive number, got -2.0")],
)  # fmt: skip
def test_matchingnet_rejects_bad_arguments_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MatchingNet(mlp(), **kwargs)


@pytest.mark.parametrize("fce", [False, True], ids=["plain", "fce"])
def test_matchingnet_short_fit_beats_chance(tmp_path, fce):
    torch.manual_seed(0)
    dm = EpisodicDataModule(
        blobs(40, 20, seed=0), test=blobs(20, 20, seed=1), ways=5, shots=1, queries=5, eval_ways=5,
        tasks_per_batch=4, train_episodes=200, eval_episodes=100, eval_tasks_per_batch=25,
    )  # fmt: skip
    learner = MatchingNet(mlp(), full_context_embeddings=fce, embedding_dim=16, scale=10.0, lr=3e-3)
    before, after = metrics_before_and_after_fit(learner, dm, default_root_dir=tmp_path)
    assert after["test/acc"] > before["test/acc"] + 0.2, (
        before,
        after,
    )  # observed: 0.42 -> 0.80 (plain), 0.40 -> 0.81 (FCE)
    assert after["test/acc"] > 0.7, after  # chance is 0.2
