"""R2-D2: meta-learning with a differentiable closed-form ridge-regression head (Bertinetto et al., 2019)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta.episode import SupportSet
from lightning_meta.functional import embed
from lightning_meta.learners.base import MetaLearner

_FORMS = ("auto", "dual", "primal")


def ridge_regression(x: Tensor, y: Tensor, penalty: Tensor | float, *, form: str = "auto") -> Tensor:
    """Weights ``W`` minimising ``||x W - y||^2 + penalty * ||W||^2`` for every task of a meta-batch.

    The primal solution ``(x^T x + penalty I_d)^-1 x^T y`` solves a ``d x d`` system; by the Woodbury identity it
    equals the dual ``x^T (x x^T + penalty I_n)^-1 y``, an ``n x n`` system, far cheaper in few-shot learning where
    the ``n`` support examples are fewer than the ``d`` features. Both are differentiable (``torch.linalg.solve``).

    Args:
        x: inputs ``[n_tasks, n, d]``.
        y: targets ``[n_tasks, n, k]``.
        penalty: positive ridge penalty (a scalar or a 0-d tensor).
        form: ``"dual"`` (Woodbury), ``"primal"``, or ``"auto"`` (dual when ``n <= d``).

    Returns:
        ``[n_tasks, d, k]`` weights.

    Raises:
        ValueError: for an unknown ``form``.

    Example:
        >>> x, y = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
        >>> torch.allclose(ridge_regression(x, y, 0.5, form="dual"), ridge_regression(x, y, 0.5, form="primal"))
        True
    """
    if form not in _FORMS:
        raise ValueError(f"ridge_regression: form must be one of {_FORMS}, got {form!r}.")
    n, d = x.shape[-2:]
    if form == "dual" or (form == "auto" and n <= d):
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        return x.transpose(-1, -2) @ torch.linalg.solve(x @ x.transpose(-1, -2) + penalty * eye, y)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    return torch.linalg.solve(x.transpose(-1, -2) @ x + penalty * eye, x.transpose(-1, -2) @ y)


class R2D2(MetaLearner):
    """R2-D2: each task is solved in closed form by ridge regression from embeddings to one-hot labels.

    Bertinetto, Henriques, Torr and Vedaldi, "Meta-learning with differentiable closed-form solvers", ICLR 2019
    (https://arxiv.org/abs/1805.08136). For support embeddings ``X`` (with a column of ones appended, the bias) and
    one-hot labels ``Y``, the head is ``W = X^T (X X^T + lambda I)^-1 Y`` (the Woodbury form: an ``n x n`` system
    for ``n`` support examples, fewer than the features), and the query logits are ``alpha * X_q W + beta``. The
    scale ``alpha``, the bias ``beta`` and the penalty ``lambda`` are meta-learned with the backbone, as in the
    paper (``lambda`` through its logarithm, so it stays positive). ``beta`` shifts every logit alike, so under the
    softmax cross-entropy it has no effect; it is kept for fidelity to the paper.

    The solve runs in at least float32, outside autocast. Adaptation needs no gradients at evaluation; the number of
    ways may differ between training and evaluation.

    Args:
        backbone: embedding network mapping ``[n, *input_shape]`` to ``[n, *feature_shape]`` (flattened here).
        ridge_lambda: initial ridge penalty ``lambda`` (positive).
        learn_lambda: meta-learn ``lambda`` (else it stays fixed).
        scale: initial output scale ``alpha`` (positive).
        lambda_per_example: the penalty is ``ridge_lambda`` times the episode's number of support examples ``n``.
            This is the reference code's solve (bertinetto/r2d2, ``fewshots/models/r2d2.py``), which divides the
            support embeddings and one-hot targets by ``sqrt(n)`` first: the same weights as ``lambda = n *
            ridge_lambda`` on the raw embeddings. One ``ridge_lambda`` then suits every number of ways and shots
            (the reference's 50 acts as 15,000 on its 60-way 5-shot training episodes and as 250 on 5-way 1-shot).
        lr: learning rate of the outer optimizer, Adam.

    Raises:
        ValueError: for a non-positive ``ridge_lambda``, ``scale`` or ``lr``.

    Example:
        >>> import torch
        >>> from lightning_meta import Episode
        >>> from lightning_meta.learners import R2D2
        >>> learner = R2D2(torch.nn.Linear(8, 32))
        >>> task = Episode(torch.randn(10, 8), torch.arange(5).repeat_interleave(2), torch.randn(15, 8),
        ...                torch.arange(5).repeat_interleave(3), ways=5)
        >>> learner(Episode.stack([task, task])).shape
        torch.Size([2, 15, 5])
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        ridge_lambda: float = 1.0,
        learn_lambda: bool = True,
        scale: float = 1.0,
        lambda_per_example: bool = False,
        lr: float = 1e-3,
    ) -> None:
        super().__init__(lr=lr)
        if not ridge_lambda > 0:
            raise ValueError(f"R2D2: ridge_lambda must be a positive number, got {ridge_lambda!r}.")
        if not scale > 0:
            raise ValueError(f"R2D2: scale must be a positive number, got {scale!r}.")
        self.save_learner_hyperparameters()
        self.backbone = backbone
        self.lambda_per_example = lambda_per_example
        log_lambda = torch.tensor(math.log(ridge_lambda))
        if learn_lambda:
            self.log_lambda = nn.Parameter(log_lambda)
        else:  # a setting, not state: not saved, so the arguments (and the command line) give it on loading
            self.register_buffer("log_lambda", log_lambda, persistent=False)
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.bias = nn.Parameter(torch.tensor(0.0))

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints of versions that saved a fixed penalty still load; the arguments' ``ridge_lambda`` applies."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        if isinstance(self.log_lambda, nn.Parameter) or "log_lambda" not in state:
            return
        saved = float(state.pop("log_lambda").exp())
        if not math.isclose(saved, float(self.log_lambda.exp()), rel_tol=1e-6):
            rank_zero_warn(
                f"R2D2: the checkpoint's fixed ridge penalty {saved:g} is not used: learn_lambda=False, so the "
                f"penalty is the argument ridge_lambda={float(self.log_lambda.exp()):g}."
            )

    @staticmethod
    def _with_bias_column(features: Tensor) -> Tensor:
        return torch.cat([features, features.new_ones(*features.shape[:-1], 1)], dim=-1)

    @override
    def adapt(self, support: SupportSet) -> Tensor:
        """Ridge-regression weights ``[n_tasks, features + 1, ways]`` fitted to each task's support set."""
        if support.ways is None:
            raise ValueError("R2D2: episodes must be classification episodes (ways set), got ways=None.")
        features = embed(self.backbone, support.support_x)
        dtype = torch.promote_types(features.dtype, torch.float32)
        with torch.autocast(features.device.type, enabled=False):
            x = self._with_bias_column(features.to(dtype))
            y = F.one_hot(support.support_y, support.ways).to(dtype)
            penalty = self.log_lambda.exp().to(dtype) * (x.shape[-2] if self.lambda_per_example else 1)
            return ridge_regression(x, y, penalty, form="auto")

    @override
    def predict(self, query_x: Tensor, state: Tensor) -> Tensor:
        """Logits ``[n_tasks, n_query, ways]``: ``alpha * [f(x), 1] W + beta``."""
        features = embed(self.backbone, query_x)
        with torch.autocast(features.device.type, enabled=False):
            x = self._with_bias_column(features.to(state.dtype))
            return self.scale * (x @ state) + self.bias
