"""MAML and FOMAML (Finn et al., 2017), with the MAML++ options of Antoniou et al. (2019)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta import functional
from lightning_meta.episode import Episode
from lightning_meta.inner_optim import InnerOptimizer
from lightning_meta.learners.gradient import GradientLearner, InnerPrecision, StrategyChoice


class MAML(GradientLearner):
    """Model-Agnostic Meta-Learning: learn an initialisation that adapts to a task in a few gradient steps.

    Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    Each task adapts the initial weights with ``inner_steps`` SGD steps on its support loss; the meta-loss is
    the query loss at the adapted weights, averaged over the meta-batch, and is differentiated through the
    adaptation (second order) or not (``first_order=True``: FOMAML).

    MAML++ options (Antoniou, Edwards and Storkey, "How to train your MAML", ICLR 2019):

    * ``multi_step_loss=True``: the meta-loss is a weighted sum of the query losses after every inner step; the
      weights start equal and anneal towards the last step over ``multi_step_loss_epochs`` epochs (the paper's
      schedule), after which only the last step counts.
    * ``learn_inner_lr=True``: per-layer per-step learned inner learning rates (LSLR), initialised to
      ``inner_lr``; they are parameters of this module, so the outer optimizer updates them and checkpoints keep
      them. Evaluation with more steps than training reuses the last step's rates.

    First-order annealing (first order early, second order later) is the ``FirstOrderAnnealing`` callback's job:
    it sets :attr:`first_order`.

    Args:
        model: the network to meta-train.
        inner_lr: inner-loop step size (0.4 for Omniglot, 0.01 for mini-ImageNet and sinusoids in the paper).
        inner_steps: inner steps during training.
        eval_inner_steps: inner steps at validation and test (default: ``inner_steps``; the paper uses 10).
        first_order: FOMAML: treat the inner gradients as constants.
        multi_step_loss: MAML++'s multi-step loss.
        multi_step_loss_epochs: epochs over which its weights anneal to the last step.
        learn_inner_lr: MAML++'s per-layer per-step learned inner learning rates.
        strategy: ``"auto"``, ``"vmap"`` or ``"loop"`` (see :class:`GradientLearner`).
        inner_precision: ``"float32"`` or ``"autocast"``: the inner loop's precision under mixed precision
            (see :class:`~lightning_meta.learners.gradient.GradientLearner`).
        compile_inner_loop: adapt through :func:`torch.compile`.
        inner_optimizer: the inner update rule (default plain SGD; see :mod:`lightning_meta.inner_optim`).
        lr: learning rate of the outer optimizer (Adam).

    Example:
        >>> import torch
        >>> from lightning_meta import Episode
        >>> from lightning_meta.models import MLP
        >>> maml = MAML(MLP(), inner_lr=0.01, inner_steps=2, strategy="vmap")
        >>> x = torch.randn(3, 10, 1)
        >>> episode = Episode(x, torch.sin(x), x, torch.sin(x), batched=True)
        >>> loss, predictions = maml.meta_loss(episode)
        >>> loss.backward()
        >>> predictions.shape, maml.model.head.weight.grad is not None
        (torch.Size([3, 10, 1]), True)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        multi_step_loss: bool = False,
        multi_step_loss_epochs: int = 10,
        learn_inner_lr: bool = False,
        strategy: StrategyChoice = "auto",
        inner_precision: InnerPrecision = "float32",
        compile_inner_loop: bool = False,
        inner_optimizer: InnerOptimizer | None = None,
        lr: float = 1e-3,
    ) -> None:
        super().__init__(
            model,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            strategy=strategy,
            inner_precision=inner_precision,
            compile_inner_loop=compile_inner_loop,
            inner_optimizer=inner_optimizer,
            lr=lr,
        )
        if isinstance(multi_step_loss_epochs, bool) or not isinstance(multi_step_loss_epochs, int):
            raise ValueError(f"MAML: multi_step_loss_epochs must be an integer, got {multi_step_loss_epochs!r}.")
        if multi_step_loss_epochs < 1:
            raise ValueError(f"MAML: multi_step_loss_epochs must be at least 1, got {multi_step_loss_epochs}.")
        self.first_order = first_order
        self.multi_step_loss = multi_step_loss
        self.multi_step_loss_epochs = multi_step_loss_epochs
        self.learn_inner_lr = learn_inner_lr
        # LSLR: one learned rate per adapted parameter tensor and step. ParameterDict keys cannot hold dots.
        self.inner_lrs = nn.ParameterDict()
        if learn_inner_lr:
            for name in self.adapted_names() or [n for n, _ in model.named_parameters()]:
                dtype = model.get_parameter(name).dtype
                self.inner_lrs[name.replace(".", "__")] = nn.Parameter(
                    torch.full((inner_steps,), inner_lr, dtype=dtype)
                )
        self.save_learner_hyperparameters()

    @override
    def first_order_now(self) -> bool:
        return self.first_order

    @override
    def inner_lr_for(self, steps: int) -> functional.LR:
        if not self.learn_inner_lr:
            return self.inner_lr
        last = self.inner_steps - 1
        return [
            {key.replace("__", "."): rates[min(step, last)] for key, rates in self.inner_lrs.items()}
            for step in range(steps)
        ]

    def multi_step_loss_weights(self) -> Tensor:
        """The weight of each inner step's query loss at the current epoch (MAML++'s annealing schedule)."""
        n = self.inner_steps
        epoch = self.current_epoch if self._trainer is not None else 0
        if epoch >= self.multi_step_loss_epochs:
            weights = torch.zeros(n)
            weights[-1] = 1.0
            return weights
        decay = 1.0 / n / self.multi_step_loss_epochs
        floor = 0.03 / n
        weights = torch.full((n,), max(1.0 / n - epoch * decay, floor))
        weights[-1] = min(1.0 / n + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
        return weights

    @override
    def batch_meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        if not (self.training and self.multi_step_loss and self.inner_steps > 1):
            return super().batch_meta_loss(episode)
        trace: Any = self.adapt_params(
            episode, steps=self.inner_steps, first_order=self.first_order_now(), return_all=True
        )
        weights = self.multi_step_loss_weights().tolist()
        loss: Tensor | float = 0.0
        predictions = episode.query_y
        for weight, params in zip(weights, trace, strict=True):
            predictions = self.predict(episode.query_x, params)
            loss = loss + weight * self.query_loss(predictions, episode)
        return loss, predictions  # type: ignore[return-value]
