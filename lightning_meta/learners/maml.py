"""MAML and FOMAML (Finn et al., 2017), with the MAML++ options of Antoniou et al. (2019)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta import functional
from lightning_meta.episode import Episode
from lightning_meta.inner_loop import InnerLoop
from lightning_meta.learners.gradient import GradientLearner


class MAML(GradientLearner):
    """Model-Agnostic Meta-Learning: learn an initialisation that adapts to a task in a few gradient steps.

    Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
    Each task adapts the initial weights with ``inner_loop.steps`` SGD steps on its support loss; the meta-loss is
    the query loss at the adapted weights, averaged over the meta-batch, and is differentiated through the
    adaptation (second order) or not (``InnerLoop(first_order=True)``: FOMAML).

    MAML++ options (Antoniou, Edwards and Storkey, "How to train your MAML", ICLR 2019):

    * ``multi_step_loss=True``: the meta-loss is a weighted sum of the query losses after every inner step; the
      weights start equal and anneal towards the last step over ``multi_step_loss_epochs`` epochs (the paper's
      schedule), after which only the last step counts.
    * ``learn_inner_lr=True``: per-layer per-step learned inner learning rates (LSLR), initialised to the inner
      loop's ``lr``; they are parameters of this module, so the outer optimizer updates them and checkpoints keep
      them, and they are given to the inner update rule at every step. Evaluation with more steps than training
      reuses the last step's rates.

    First-order annealing (first order early, second order later) is the ``FirstOrderAnnealing`` callback's job:
    it sets ``inner_loop.first_order``.

    Args:
        model: the network to meta-train.
        inner_loop: how it adapts (:class:`~lightning_meta.InnerLoop`; default ``InnerLoop(lr=0.01, steps=1)``).
            The paper: ``lr`` 0.4 on Omniglot, 0.01 on mini-ImageNet and sinusoids; 10 evaluation steps.
        multi_step_loss: MAML++'s multi-step loss.
        multi_step_loss_epochs: epochs over which its weights anneal to the last step.
        learn_inner_lr: MAML++'s per-layer per-step learned inner learning rates.
        lr: learning rate of the outer optimizer (Adam).

    Example:
        >>> import torch
        >>> from lightning_meta import Episode, InnerLoop
        >>> from lightning_meta.models import MLP
        >>> maml = MAML(MLP(), inner_loop=InnerLoop(lr=0.01, steps=2, vectorize="vmap"))
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
        inner_loop: InnerLoop | None = None,
        multi_step_loss: bool = False,
        multi_step_loss_epochs: int = 10,
        learn_inner_lr: bool = False,
        lr: float = 1e-3,
    ) -> None:
        super().__init__(model, inner_loop=inner_loop, lr=lr)
        if isinstance(multi_step_loss_epochs, bool) or not isinstance(multi_step_loss_epochs, int):
            raise ValueError(f"MAML: multi_step_loss_epochs must be an integer, got {multi_step_loss_epochs!r}.")
        if multi_step_loss_epochs < 1:
            raise ValueError(f"MAML: multi_step_loss_epochs must be at least 1, got {multi_step_loss_epochs}.")
        self.multi_step_loss = multi_step_loss
        self.multi_step_loss_epochs = multi_step_loss_epochs
        self.learn_inner_lr = learn_inner_lr
        # LSLR: one learned rate per adapted parameter tensor and step. ParameterDict keys cannot hold dots.
        self.inner_lrs = nn.ParameterDict()
        if learn_inner_lr:
            for name in self.adapted_names() or [n for n, _ in model.named_parameters()]:
                dtype = model.get_parameter(name).dtype
                self.inner_lrs[name.replace(".", "__")] = nn.Parameter(
                    torch.full((self.inner_loop.steps,), self.inner_loop.lr, dtype=dtype)
                )
        self.save_learner_hyperparameters()

    @override
    def inner_lr_for(self, steps: int) -> functional.LR:
        if not self.learn_inner_lr:
            return self.inner_loop.lr
        last = len(next(iter(self.inner_lrs.values()))) - 1  # the steps it was built with
        return [
            {key.replace("__", "."): rates[min(step, last)] for key, rates in self.inner_lrs.items()}
            for step in range(steps)
        ]

    def multi_step_loss_weights(self) -> Tensor:
        """The weight of each inner step's query loss at the current epoch (MAML++'s annealing schedule)."""
        n = self.inner_loop.steps
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
        if not (self.training and self.multi_step_loss and self.inner_loop.steps > 1):
            return super().batch_meta_loss(episode)
        trace: Any = self.adapt_params(
            episode, steps=self.inner_loop.steps, first_order=self.first_order_now(), return_all=True
        )
        weights = self.multi_step_loss_weights().tolist()
        loss: Tensor | float = 0.0
        predictions = episode.query_y
        for weight, params in zip(weights, trace, strict=True):
            predictions = self.predict(episode.query_x, params)
            loss = loss + weight * self.query_loss(predictions, episode)
        return loss, predictions  # type: ignore[return-value]
