"""Reptile (Nichol, Achiam and Schulman, 2018) as a gradient of a surrogate loss."""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta.episode import Episode
from lightning_meta.functional import Params
from lightning_meta.inner_loop import InnerLoop
from lightning_meta.inner_optim import OptState, Proximal
from lightning_meta.learners.gradient import GradientLearner
from lightning_meta.nonfinite import all_finite


class CarriedInnerState(nn.Module):
    """An inner optimizer's state kept from one adaptation to the next, as buffers, and the steps taken so far.

    Buffers, so that checkpoints save it (a resumed run continues with the same state), ``.to()`` moves it with the
    learner, and under DDP every rank starts a meta-step from rank 0's (DDP broadcasts buffers before each forward).
    Each parameter's state tensors are named after it, with ``/`` for ``.``: ``conv1/weight/0``.

    Args:
        state: the initial state, keyed by parameter name (``optimizer.init(params)``).
    """

    def __init__(self, state: OptState) -> None:
        super().__init__()
        self.layout = {name: len(tensors) for name, tensors in state.items()}
        for name, tensors in state.items():
            for i, tensor in enumerate(tensors):
                self.register_buffer(self.key(name, i), tensor.detach().clone())
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long))

    @staticmethod
    def key(name: str, i: int) -> str:
        """The buffer name of state tensor ``i`` of parameter ``name``."""
        return f"{name.replace('.', '/')}/{i}"

    def get(self) -> tuple[OptState, int]:
        """The state (the buffers themselves) and the number of steps taken."""
        buffers = dict(self.named_buffers())
        state = {name: tuple(buffers[self.key(name, i)] for i in range(n)) for name, n in self.layout.items()}
        return state, int(buffers["steps_taken"])

    @torch.no_grad()
    def set(self, state: OptState, steps_taken: int) -> None:
        """Copy ``state`` (entries for some or all of the parameters) into the buffers."""
        buffers = dict(self.named_buffers())
        for name, tensors in state.items():
            for i, tensor in enumerate(tensors):
                buffers[self.key(name, i)].copy_(tensor)
        buffers["steps_taken"].fill_(steps_taken)


class Reptile(GradientLearner):
    """Reptile: move the initial weights towards the weights each task's inner loop reaches.

    Nichol, Achiam and Schulman, "On First-Order Meta-Learning Algorithms", 2018. Each task adapts
    ``theta`` with ``inner_loop.steps`` first-order steps on its support set, reaching ``phi``; the outer update is
    ``theta <- theta + lr * mean(phi - theta)``. Here that update is the gradient of the surrogate loss
    ``0.5 * mean_tasks ||theta - stopgrad(phi)||^2`` (its gradient is ``theta - mean(phi)``), returned from
    ``training_step``, so automatic optimization, mixed precision, clipping, accumulation and DDP work unchanged.
    With the default SGD outer optimizer, ``lr`` is Reptile's outer step size epsilon.

    Evaluation is transductive by default: the adapted model sees a task's queries as one batch, so a
    batch-statistics normalisation (:class:`~lightning_meta.models.BatchStatNorm2d`) normalises them together,
    as in the other learners here. ``transductive=False`` is the paper's headline protocol (its Table 1
    "non-transductive" rows; ``run_omniglot.py`` without ``--transductive``): each query is classified alone, in
    one batch with the task's support set (supervised_reptile's ``_test_predictions``), so no query's statistics
    reach another's prediction. It costs one forward pass per query instead of one per task, and applies only in
    evaluation; training is unchanged.

    The reference code (openai/supervised-reptile) adapts every task with one TensorFlow Adam whose moments are
    never reset: they carry over from task to task and from meta-step to meta-step, and evaluation starts from the
    training state. ``carry_inner_state=True`` does the same: the inner optimizer's state lives in the learner
    (:class:`CarriedInnerState`, buffers saved in checkpoints), training adapts a meta-batch's tasks one after the
    other, each from the state the previous one left, and stores the last; validation and test adapt every task
    from a copy of it and leave it unchanged. Measured on Omniglot 5-way 1-shot with a hand-written loop
    (``benchmarks/reptile_adam_state.py``): carried moments validate about 10 points above fresh ones after 200 to
    600 meta-steps. Not with ``inner_loop.compiled`` (the step number, which Adam's bias corrections read, changes
    at every adaptation), nor with :class:`~lightning_meta.inner_optim.Proximal` (its state holds the point each
    task started from). A meta-batch whose new state is not finite leaves the state as it was. Under DDP every rank
    starts a meta-step from rank 0's state (DDP broadcasts buffers), and the state follows rank 0's tasks.

    Logged: ``train/loss`` is the surrogate; ``train/query_loss`` the query loss after adaptation.

    Args:
        model: the network to meta-train.
        inner_loop: how it adapts (:class:`~lightning_meta.InnerLoop`; default ``InnerLoop(lr=0.01, steps=5)``).
            Reptile always adapts first order. The paper's Omniglot and mini-ImageNet settings adapt with
            ``optimizer=Adam(betas=(0.0, 0.999))``.
        lr: outer step size (SGD learning rate).
        transductive: whether evaluation predicts a task's queries together (``True``) or each one alone beside
            the support set (``False``).
        carry_inner_state: keep the inner optimizer's state (Adam's moments and step count) from task to task, as
            the reference code does (``False``: every task starts from a fresh state).

    Raises:
        ValueError: ``carry_inner_state`` with ``inner_loop.compiled`` or a ``Proximal`` inner optimizer.

    Example:
        >>> import torch
        >>> from lightning_meta import Episode, InnerLoop
        >>> from lightning_meta.models import MLP
        >>> reptile = Reptile(MLP(), inner_loop=InnerLoop(lr=0.01, steps=3, vectorize="loop"))
        >>> x = torch.randn(2, 10, 1)
        >>> surrogate, predictions = reptile.meta_loss(Episode(x, torch.sin(x), x, torch.sin(x), batched=True))
        >>> surrogate.backward()
        >>> predictions.shape
        torch.Size([2, 10, 1])
        >>> alone = Reptile(MLP(), inner_loop=InnerLoop(lr=0.01, steps=3, vectorize="loop"), transductive=False)
        >>> _ = alone.eval()
        >>> loss, predictions = alone.meta_loss(Episode(x, torch.sin(x), x, torch.sin(x), batched=True))
        >>> predictions.shape
        torch.Size([2, 10, 1])
        >>> from lightning_meta.inner_optim import Adam
        >>> carried = Reptile(MLP(), inner_loop=InnerLoop(lr=0.001, steps=3, optimizer=Adam(betas=(0.0, 0.999))),
        ...                   carry_inner_state=True)
        >>> _ = carried.meta_loss(Episode(x, torch.sin(x), x, torch.sin(x), batched=True))
        >>> carried.inner_state.get()[1]  # 2 tasks x 3 steps
        6
    """

    default_inner_loop: ClassVar[dict[str, Any]] = {"steps": 5}
    second_order: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_loop: InnerLoop | None = None,
        lr: float = 1.0,
        transductive: bool = True,
        carry_inner_state: bool = False,
    ) -> None:
        super().__init__(model, inner_loop=inner_loop, lr=lr)
        for name, value in (("transductive", transductive), ("carry_inner_state", carry_inner_state)):
            if not isinstance(value, bool):
                raise ValueError(f"Reptile: {name} must be True or False, got {value!r}.")
        self.transductive = transductive
        self.carry_inner_state = carry_inner_state
        #: the carried inner-optimizer state (``carry_inner_state=True``), else ``None``
        self.inner_state: CarriedInnerState | None = None
        if carry_inner_state:
            if self.inner_loop.compiled:
                raise ValueError(
                    "Reptile: carry_inner_state=True does not work with inner_loop.compiled=True: the inner step "
                    "number (Adam's bias corrections) changes at every adaptation, so every call would compile "
                    "again. Set compiled=False."
                )
            if isinstance(self.inner_loop.optimizer, Proximal):
                raise ValueError(
                    "Reptile: carry_inner_state=True does not work with a Proximal inner optimizer: its state holds "
                    "the point each task starts from, which a carried state would make stale."
                )
            self.inner_state = CarriedInnerState(self.inner_loop.optimizer.init(dict(model.named_parameters())))
        self.save_learner_hyperparameters()

    @override
    def initial_inner_state(self) -> tuple[OptState | None, int]:
        """The carried state (``carry_inner_state=True``) or ``(None, 0)``, a fresh state for every task."""
        if self.inner_state is None:
            return None, 0
        return self.inner_state.get()

    def adapt_in_sequence(self, episode: Episode) -> Params:
        """Adapt the tasks of ``episode`` in sequence, each from the state the previous one left; keep the last.

        The adapted parameters have a leading task dimension, as :meth:`adapt`'s.
        """
        assert self.inner_state is not None
        state, steps_taken = self.inner_state.get()
        theta = self.inner_params()
        names = self.inner_names(theta)
        adapted: list[Params] = []
        for task in episode:
            phi, final = self.adapt_params(
                Episode.stack([task]),
                steps=self.inner_loop.steps,
                first_order=True,
                state=state,
                first_step=steps_taken,
                return_state=True,
            )
            state = {**state, **{name: tuple(t[0] for t in tensors) for name, tensors in final.items()}}
            steps_taken += self.inner_loop.steps
            adapted.append(phi)
        if bool(all_finite(t for tensors in state.values() for t in tensors)):
            self.inner_state.set(state, steps_taken)
        return {name: torch.cat([phi[name] for phi in adapted]) if name in names else theta[name] for name in theta}

    def predict_each_alone(self, support_x: Tensor, query_x: Tensor, state: Params) -> Tensor:
        """Query predictions, each query in a batch of its own with the support inputs (non-transductive).

        Args:
            support_x: ``[T, n_support, ...]``.
            query_x: ``[T, n_query, ...]``.
            state: the adapted parameters, as :meth:`adapt` returns them.

        Returns:
            ``[T, n_query, ...]``, the output for each query from the batch ``support + that query``.
        """
        n_support = support_x.shape[1]
        outputs = [
            self.predict(torch.cat([support_x, query_x[:, j : j + 1]], dim=1), state)[:, n_support:]
            for j in range(query_x.shape[1])
        ]
        return torch.cat(outputs, dim=1)

    @override
    def forward(self, episode: Episode) -> Tensor:
        if self.training or self.transductive:
            return super().forward(episode)
        return self.predict_each_alone(episode.support_x, episode.query_x, self.adapt(episode.support_set))

    @override
    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        if not self.training:
            if self.transductive:
                return super().meta_loss(episode)
            predictions = self.forward(episode)
            return self.query_loss(predictions, episode), predictions
        theta = self.inner_params()
        with torch.no_grad():
            if self.inner_state is not None:
                phi = self.adapt_in_sequence(episode)
            else:
                phi = cast(Params, self.adapt_params(episode, steps=self.inner_loop.steps, first_order=True))
            predictions = self.predict(episode.query_x, phi)
            if self._trainer is not None:
                self.log("train/query_loss", self.query_loss(predictions, episode), batch_size=episode.n_tasks)
        surrogate: Tensor = sum(  # type: ignore[assignment]
            0.5 * (p.unsqueeze(0) - phi[name]).pow(2).flatten(1).sum(1).mean() for name, p in theta.items()
        )
        return surrogate, predictions  # type: ignore[return-value]

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Load a checkpoint saved with the other ``carry_inner_state`` setting, with a warning.

        Without a carried state in the checkpoint (saved with ``carry_inner_state=False``, or before it existed) the
        state starts fresh, which is how that model adapted; a carried state in the checkpoint of a learner that does
        not carry one is dropped (every task then adapts from a fresh state).
        """
        super().on_load_checkpoint(checkpoint)
        weights = checkpoint.get("state_dict", {})
        prefix = "inner_state."
        saved = [key for key in weights if key.startswith(prefix)]
        if self.inner_state is not None and not saved:
            rank_zero_warn(
                "Reptile(carry_inner_state=True) loads a checkpoint without a carried inner-optimizer state (saved "
                "with carry_inner_state=False or before it existed): the state starts fresh, as that model adapted."
            )
            weights.update({prefix + key: value for key, value in self.inner_state.state_dict().items()})
        elif self.inner_state is None and saved:
            rank_zero_warn(
                "Reptile(carry_inner_state=False) loads a checkpoint that holds a carried inner-optimizer state: it "
                "is dropped, and every task adapts from a fresh state. Pass carry_inner_state=True to use it."
            )
            for key in saved:
                del weights[key]

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)
