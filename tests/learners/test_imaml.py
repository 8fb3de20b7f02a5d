"""Implicit MAML: its meta-gradient against the closed form on a quadratic problem and against second-order MAML
unrolled through many proximal steps, vmap against loop, training and reloading."""

from __future__ import annotations

import doctest

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

import lightning_meta.learners.imaml
from lightning_meta import Episode, InnerLoop
from lightning_meta.data import EpisodicDataModule, Sinusoid
from lightning_meta.inner_optim import SGD, Adam, Proximal
from lightning_meta.learners import IMAML, MAML
from lightning_meta.models import MLP
from tests.helpers.trainers import quiet_trainer


def linear_episode(n_tasks: int = 2, features: int = 3, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tasks, 14, features, generator=g, dtype=torch.float64)
    w = torch.randn(n_tasks, features, 1, generator=g, dtype=torch.float64)
    y = x @ w + 0.1 * torch.randn(n_tasks, 14, 1, generator=g, dtype=torch.float64)
    return Episode(x[:, :6], y[:, :6], x[:, 6:], y[:, 6:], batched=True)


def closed_form_meta_gradient(model: nn.Linear, episode: Episode, lam: float) -> torch.Tensor:
    """The exact iMAML meta-gradient of a linear regressor with the mean squared error, by linear algebra.

    Parameters ``theta = [w, b]``; support loss ``|X theta - y|^2 / n`` has Hessian ``H = 2 X^T X / n``; the
    proximal solution is ``phi = (H + lam I)^-1 (lam theta + 2 X^T y / n)``, ``d phi / d theta = lam (H + lam I)^-1``
    and the meta-gradient of the query loss (mean over tasks) is ``sum_t (I + H_t / lam)^-1 g_t``.
    """
    theta = torch.cat([model.weight.detach().flatten(), model.bias.detach()])
    total = torch.zeros_like(theta)
    n_tasks = episode.n_tasks
    for t in range(n_tasks):
        xs = torch.cat([episode.support_x[t], torch.ones(len(episode.support_x[t]), 1, dtype=torch.float64)], 1)
        xq = torch.cat([episode.query_x[t], torch.ones(len(episode.query_x[t]), 1, dtype=torch.float64)], 1)
        ys, yq = episode.support_y[t].flatten(), episode.query_y[t].flatten()
        hessian = 2 * xs.T @ xs / len(xs)
        eye = torch.eye(len(theta), dtype=torch.float64)
        phi = torch.linalg.solve(hessian + lam * eye, lam * theta + 2 * xs.T @ ys / len(xs))
        g = 2 * xq.T @ (xq @ phi - yq) / len(xq) / n_tasks  # the query loss is the mean over every query
        total += torch.linalg.solve(eye + hessian / lam, g)
    return total


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_imaml_meta_gradient_equals_the_closed_form_on_a_quadratic_problem(strategy):
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    lam = 2.0
    # 400 proximal SGD steps converge to 1e-13; 4 parameters: 4 CG steps solve exactly (8 for rounding).
    learner = IMAML(model, inner_loop=InnerLoop(lr=0.1, steps=400, vectorize=strategy), lam=lam, cg_steps=8)
    episode = linear_episode()
    loss, _ = learner.meta_loss(episode)
    loss.backward()
    got = torch.cat([model.weight.grad.flatten(), model.bias.grad])
    torch.testing.assert_close(got, closed_form_meta_gradient(model, episode, lam), rtol=1e-9, atol=1e-12)


def test_imaml_meta_gradient_equals_second_order_maml_unrolled_through_the_converged_proximal_loop():
    """On a nonlinear network, unrolled second-order MAML through a converged proximal inner loop differentiates the
    same solution map: its meta-gradient tends to iMAML's as the loop converges (measured relative differences:
    0.1 after 5 steps, 2e-5 after 50, 7e-16 after 300; the closed-form test above: 2e-16)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 16, 1, generator=g, dtype=torch.float64) * 6 - 3
    episode = Episode(x[:, :8], torch.sin(x[:, :8]), x[:, 8:], torch.sin(x[:, 8:]), batched=True)
    gradients = []
    for build in (
        lambda m: IMAML(m, inner_loop=InnerLoop(lr=0.1, steps=300, vectorize="vmap"), lam=2.0, cg_steps=30),
        lambda m: MAML(
            m, inner_loop=InnerLoop(lr=0.1, steps=300, vectorize="vmap", optimizer=Proximal(SGD(), lam=2.0))
        ),
    ):
        torch.manual_seed(0)
        learner = build(MLP(hidden=(6,)).double())
        loss, _ = learner.meta_loss(episode)
        loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in learner.model.parameters()]))
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-6, atol=1e-9)


def test_imaml_vmap_and_loop_agree_with_an_adam_inner_optimizer():
    x = torch.rand(3, 12, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 6 - 3
    episode = Episode(x[:, :6], torch.sin(x[:, :6]), x[:, 6:], torch.sin(x[:, 6:]), batched=True)
    results = []
    for strategy in ("vmap", "loop"):
        torch.manual_seed(0)
        loop = InnerLoop(lr=0.01, steps=4, vectorize=strategy, optimizer=Adam(betas=(0.0, 0.999)))
        learner = IMAML(MLP(hidden=(6,)).double(), inner_loop=loop, lam=1.0)
        loss, _ = learner.meta_loss(episode)
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in learner.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-12)


def test_imaml_fits_and_reloads_from_its_checkpoint_with_weights_only_loading(tmp_path):
    torch.manual_seed(0)
    loop = InnerLoop(lr=0.05, steps=3, vectorize="vmap", optimizer=SGD(momentum=0.5))
    learner = IMAML(MLP(hidden=(8,)), inner_loop=loop, lam=2.0, cg_steps=3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    data = EpisodicDataModule(Sinusoid(), Sinusoid(), Sinusoid(), shots=5, queries=5, tasks_per_batch=4,
                              train_episodes=8, eval_episodes=4)  # fmt: skip
    before = [p.detach().clone() for p in learner.parameters()]
    quiet_trainer(max_epochs=1, callbacks=[checkpoint]).fit(learner, data)
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.parameters(), strict=True))
    reloaded = IMAML.load_from_checkpoint(tmp_path / "last.ckpt")
    assert (reloaded.lam, reloaded.cg_steps, reloaded.inner_loop.optimizer.momentum) == (2.0, 3, 0.5)
    x = torch.rand(2, 10, 1) * 10 - 5
    batch = Episode(x[:, :5], torch.sin(x[:, :5]), x[:, 5:], torch.sin(x[:, 5:]), batched=True)
    learner.eval()
    reloaded.eval()
    torch.testing.assert_close(reloaded(batch), learner(batch), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": 0.0}, "lam must be a positive finite number, got 0.0"),
        ({"lam": float("inf")}, "lam must be a positive finite number, got inf"),
        ({"cg_steps": 0}, "cg_steps must be a positive integer, got 0"),
    ],
)
def test_bad_imaml_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IMAML(MLP(), **kwargs)  # lam and cg_steps: IMAML's own arguments


def test_doctests_of_imaml_run():
    failures, _ = doctest.testmod(lightning_meta.learners.imaml)
    assert failures == 0
