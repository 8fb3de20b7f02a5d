"""R2D2: the ridge head against the normal equations in float64, gradients to its meta-parameters, a short fit."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_meta.data import EpisodicDataModule
from lightning_meta.learners import R2D2
from lightning_meta.learners.r2d2 import ridge_regression
from tests.helpers.synthetic import blobs, random_meta_batch
from tests.helpers.trainers import metrics_before_and_after_fit


def mlp(dim: int = 16, out: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, out))


def normal_equations(x: torch.Tensor, y: torch.Tensor, penalty: float) -> torch.Tensor:
    """The textbook ridge solution, task by task: solve (X^T X + lambda I) W = X^T Y."""
    return torch.stack([
        torch.linalg.solve(xt.T @ xt + penalty * torch.eye(xt.shape[1], dtype=xt.dtype), xt.T @ yt)
        for xt, yt in zip(x, y, strict=True)
    ])  # fmt: skip


@pytest.mark.parametrize("form", ["dual", "primal", "auto"])
@pytest.mark.parametrize(("n", "d"), [(10, 33), (40, 7)], ids=["n<d", "n>d"])
def test_ridge_regression_equals_solve_of_the_normal_equations_in_float64(form, n, d):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, n, d, generator=g, dtype=torch.float64)
    y = F.one_hot(torch.randint(5, (3, n), generator=g), 5).double()
    for penalty in (1e-2, 1.0, 50.0):
        torch.testing.assert_close(ridge_regression(x, y, penalty, form=form), normal_equations(x, y, penalty))


def test_ridge_regression_rejects_an_unknown_form():
    with pytest.raises(ValueError, match=r"form must be one of \('auto', 'dual', 'primal'\), got 'cholesky'"):
        ridge_regression(torch.zeros(1, 2, 3), torch.zeros(1, 2, 1), 1.0, form="cholesky")


def test_r2d2_head_and_logits_match_the_paper_formula():
    torch.manual_seed(0)
    backbone = mlp(6, 20).double()
    learner = R2D2(backbone, ridge_lambda=0.7, scale=3.0).double()
    with torch.no_grad():
        learner.bias.fill_(0.25)
    episode = random_meta_batch(n_tasks=3, ways=4, shots=2, queries=3, dim=6)
    with torch.no_grad():
        head = learner.adapt(episode)
        logits = learner.predict(episode.query_x, head)
        for t, task in enumerate(episode):
            x = torch.cat([backbone(task.support_x), torch.ones(8, 1, dtype=torch.float64)], 1)  # the bias column
            y = F.one_hot(task.support_y, 4).double()
            w = torch.linalg.solve(x.T @ x + 0.7 * torch.eye(21, dtype=torch.float64), x.T @ y)
            torch.testing.assert_close(head[t], w)
            xq = torch.cat([backbone(task.query_x), torch.ones(12, 1, dtype=torch.float64)], 1)
            torch.testing.assert_close(logits[t], 3.0 * xq @ w + 0.25)


@pytest.mark.parametrize("shots", [1, 5])
def test_a_penalty_per_support_example_equals_the_reference_codes_normalised_solve(shots):
    # bertinetto/r2d2 fewshots/models/r2d2.py: the support embeddings with their bias column and the one-hot targets
    # are divided by sqrt(n_way * n_shot), then W = (X^T X + lambda I)^-1 X^T Y; the queries are not divided
    torch.manual_seed(1)
    backbone = mlp(6, 20).double()
    learner = R2D2(backbone, ridge_lambda=0.7, scale=3.0, lambda_per_example=True).double()
    episode = random_meta_batch(n_tasks=2, ways=4, shots=shots, queries=3, dim=6)
    with torch.no_grad():
        head = learner.adapt(episode)
        for t, task in enumerate(episode):
            n = 4 * shots
            x = torch.cat([backbone(task.support_x), torch.ones(n, 1, dtype=torch.float64)], 1) / math.sqrt(n)
            y = F.one_hot(task.support_y, 4).double() / math.sqrt(n)
            w = torch.linalg.inv(x.T @ x + 0.7 * torch.eye(21, dtype=torch.float64)) @ x.T @ y
            torch.testing.assert_close(head[t], w)


def test_r2d2_meta_learns_lambda_scale_and_backbone_through_the_closed_form_solve():
    torch.manual_seed(0)
    learner = R2D2(mlp(6, 20))
    loss, _ = learner.meta_loss(random_meta_batch(2, 5, 1, 3, 6).to(torch.float32))
    loss.backward()
    assert learner.log_lambda.grad.abs() > 0 and learner.scale.grad.abs() > 0
    assert learner.backbone[0].weight.grad.abs().sum() > 0
    fixed = R2D2(mlp(6, 20), ridge_lambda=2.0, learn_lambda=False)
    assert "log_lambda" not in dict(fixed.named_parameters())
    assert fixed.log_lambda.exp().item() == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"ridge_lambda": 0.0}, r"ridge_lambda must be a positive number, got 0.0"),
     ({"scale": -1.0}, r"scale must be a positive number, got -1.0")],
)  # fmt: skip
def test_r2d2_rejects_bad_arguments_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        R2D2(mlp(), **kwargs)


def test_r2d2_solves_in_float32_under_bfloat16_autocast():
    learner = R2D2(mlp(6, 20))
    episode = random_meta_batch(2, 5, 1, 3, 6).to(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head = learner.adapt(episode)
        logits = learner.predict(episode.query_x, head)
    assert head.dtype == torch.float32 and torch.isfinite(logits).all()


def test_r2d2_short_fit_trained_20_way_beats_chance_at_5_way_test(tmp_path):
    torch.manual_seed(0)
    dm = EpisodicDataModule(
        blobs(64, 20, seed=0), test=blobs(20, 20, seed=1), ways=20, shots=1, queries=5, eval_ways=5,
        tasks_per_batch=2, train_episodes=100, eval_episodes=100, eval_tasks_per_batch=25,
    )  # fmt: skip
    learner = R2D2(mlp(), scale=5.0, lr=3e-3)
    before, after = metrics_before_and_after_fit(learner, dm, default_root_dir=tmp_path)
    assert after["test/acc"] > before["test/acc"] + 0.2, (before, after)  # observed: 0.42 -> 0.89
    assert after["test/acc"] > 0.7, after  # chance is 0.2
    assert math.isfinite(learner.log_lambda.item())


def test_a_fixed_ridge_penalty_comes_from_the_arguments_not_the_checkpoint(tmp_path):
    # learn_lambda=False makes lambda a setting: `--model.init_args.ridge_lambda` at test time must apply. Earlier
    # versions saved it as a buffer, which silently replaced the argument on loading; such checkpoints still load.
    saved = R2D2(mlp(), ridge_lambda=2.0, learn_lambda=False)
    assert "log_lambda" not in saved.state_dict()
    checkpoint = {
        "state_dict": {**saved.state_dict(), "log_lambda": torch.tensor(math.log(2.0))},
        "hyper_parameters": dict(saved.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    saved.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.warns(UserWarning, match=r"fixed ridge penalty 2 is not used.*ridge_lambda=0\.5"):
        loaded = R2D2.load_from_checkpoint(tmp_path / "old.ckpt", backbone=mlp(), ridge_lambda=0.5)
    assert loaded.log_lambda.exp().item() == pytest.approx(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = R2D2.load_from_checkpoint(tmp_path / "old.ckpt", backbone=mlp())
    assert same.log_lambda.exp().item() == pytest.approx(2.0)
