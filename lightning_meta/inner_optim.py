"""Inner-loop optimizers: pure update rules on dictionaries of parameters (SGD, momentum, Adam, proximal).

An inner optimizer is a pair of pure functions, in the spirit of torchopt's ``GradientTransformation``:

* ``state = optimizer.init(params)``: the optimizer's state for the parameters of one task (a dictionary
  ``name -> tuple of tensors``; empty tuples for plain SGD);
* ``new_params, new_state = optimizer.update(params, grads, state, lr=lr, step=step)``: one step, out of place.

Nothing is mutated and nothing lives on the Python side between calls: the state is returned and passed back in,
the step number is a Python ``int`` given by the caller (so Adam's bias corrections are constants, as under
:func:`torch.compile`), and there is no ``.item()``. The update is differentiable: with second-order MAML the outer
gradient flows through the parameters *and* the state (Adam's moments are functions of the inner gradients), and
the functions work under :func:`torch.func.vmap` (the tasks of a meta-batch) and :func:`torch.compile`.

The learning rate is not part of the optimizer: the caller passes each step's rate (``lr`` of
:func:`~lightning_meta.functional.inner_loop`, ``inner_lr`` of a learner), in any of the forms of
:data:`~lightning_meta.functional.StepLR`: one number, a tensor, or a mapping ``name -> rate``. So the learned
per-parameter rates of Meta-SGD (Li et al., 2017) and the per-layer per-step rates of MAML++ (Antoniou et al.,
2019), which are parameters of the learner, are given to the update rule each step, and combine with any rule:
``SGD()`` with a mapping of learned tensors is Meta-SGD; with a per-step list of such mappings it is MAML++'s LSLR.

Writing a rule: subclass :class:`InnerOptimizer` and define ``update_param`` (and ``init_param`` if it keeps a
state) for one tensor; :meth:`InnerOptimizer.init` and :meth:`InnerOptimizer.update` apply them to every adapted
parameter. Keep ``__init__`` arguments keyword-only and typed: LightningCLI then reads the optimizer as a nested
``class_path``/``init_args`` block, and learners save it in checkpoints as that config (plain data, never a pickle).

Example:
    Sign-SGD (Bernstein et al., 2018) in three lines:

    >>> import torch
    >>> class SignSGD(InnerOptimizer):
    ...     def update_param(self, param, grad, state, *, lr, step):
    ...         return param - lr * grad.sign(), state
    >>> params = {"w": torch.tensor([1.0, 2.0])}
    >>> SignSGD().step(params, {"w": torch.tensor([0.3, -4.0])}, lr=0.5)
    {'w': tensor([0.5000, 2.5000])}

    and it plugs into the inner loop (``functional.inner_loop(..., optimizer=SignSGD())``) and into every gradient
    learner (``MAML(model, inner_optimizer=SignSGD())``).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Mapping
from typing import Any, TypeAlias

import torch
from torch import Tensor, nn
from typing_extensions import override

ParamState: TypeAlias = tuple[Tensor, ...]
"""The state an optimizer keeps for one parameter tensor (``()`` for none)."""

OptState: TypeAlias = dict[str, ParamState]
"""The state of one task's adaptation: a :data:`ParamState` per adapted parameter name."""

Rate: TypeAlias = float | Tensor
"""The learning rate of one parameter at one step: a number, a scalar tensor or a tensor of the parameter's shape."""


def _plain(value: Any) -> Any:
    if isinstance(value, InnerOptimizer):
        return value.init_config
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


class InnerOptimizer(nn.Module):
    """The base of the inner-loop update rules: ``init`` and ``update``, pure and out of place.

    It is an :class:`torch.nn.Module` without parameters or buffers only so that learners save it as a config: every
    subclass records its ``__init__`` arguments in ``init_config`` (``class_path``/``init_args``, as
    :func:`~lightning_meta.models.records_config` does for backbones), which a checkpoint stores as plain data and
    ``load_from_checkpoint`` rebuilds. It holds no tensors and its methods never change it.

    Subclasses define :meth:`update_param` and, if they keep a state, :meth:`init_param`.
    """

    init_config: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self: InnerOptimizer, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            if type(self) is cls:  # the outermost class records its own arguments
                bound = signature.bind(self, *args, **kwargs)
                bound.apply_defaults()
                self.__dict__["init_config"] = {
                    "class_path": f"{cls.__module__}.{cls.__qualname__}",
                    "init_args": {k: _plain(v) for k, v in bound.arguments.items() if k != "self"},
                }

        cls.__init__ = __init__  # type: ignore[method-assign,assignment]

    def init_param(self, param: Tensor) -> ParamState:
        """The initial state for one parameter tensor (default: none)."""
        return ()

    def update_param(
        self, param: Tensor, grad: Tensor, state: ParamState, *, lr: Rate, step: int
    ) -> tuple[Tensor, ParamState]:
        """One step for one parameter tensor, out of place: the new value and the new state.

        Args:
            param: the current value.
            grad: its gradient.
            state: its state, as :meth:`init_param` made it or the previous step returned it.
            lr: its learning rate at this step.
            step: the step number, from 0.
        """
        raise NotImplementedError(f"{type(self).__name__} must define update_param(param, grad, state, *, lr, step).")

    def init(self, params: Mapping[str, Tensor]) -> OptState:
        """The state for the adapted parameters of one task."""
        return {name: self.init_param(p) for name, p in params.items()}

    def update(
        self,
        params: Mapping[str, Tensor],
        grads: Mapping[str, Tensor | None],
        state: OptState,
        *,
        lr: Rate | Mapping[str, Rate],
        step: int,
    ) -> tuple[dict[str, Tensor], OptState]:
        """One step for every parameter of ``params``: the new parameters and the new state.

        A missing or ``None`` gradient (the loss does not depend on that parameter) leaves the parameter and its
        state unchanged. ``lr`` is one rate or a mapping ``name -> rate`` with an entry for every parameter.
        """
        new_params: dict[str, Tensor] = {}
        new_state: OptState = {}
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                new_params[name], new_state[name] = p, state[name]
            else:
                rate = lr[name] if isinstance(lr, Mapping) else lr
                new_params[name], new_state[name] = self.update_param(p, g, state[name], lr=rate, step=step)
        return new_params, new_state

    def step(
        self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor | None], *, lr: Rate | Mapping[str, Rate]
    ) -> dict[str, Tensor]:
        """One step from a fresh state (``update(params, grads, init(params), lr=lr, step=0)[0]``)."""
        return self.update(params, grads, self.init(params), lr=lr, step=0)[0]


def _check_fraction(owner: str, name: str, value: Any, *, allow_one: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or not (0.0 <= value < 1.0 or (allow_one and value == 1.0)):
        limit = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{owner}: {name} must be a number in {limit}, got {value!r}.")
    return float(value)


def _check_positive(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{owner}: {name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}.")
    return float(value)


def _descend(param: Tensor, direction: Tensor, lr: Rate) -> Tensor:
    """``param - lr * direction`` (``sub(alpha=)`` for a number: today's exact arithmetic)."""
    if isinstance(lr, Tensor):
        return param - lr * direction
    return param.sub(direction, alpha=lr)


class SGD(InnerOptimizer):
    """Gradient descent, optionally with (Nesterov) momentum: the inner loop of MAML (Finn et al., 2017).

    ``SGD()`` is ``param - lr * grad``, bit for bit the inner step :func:`~lightning_meta.functional.inner_loop` has
    always taken. With ``momentum`` it follows :class:`torch.optim.SGD` (no dampening): ``buf = grad`` at the first
    step, then ``buf = momentum * buf + grad``, and ``param - lr * buf`` (``param - lr * (grad + momentum * buf)``
    with ``nesterov``). Learned rates (Meta-SGD, MAML++) are rates given as tensors.

    Args:
        momentum: the momentum factor, in [0, 1).
        nesterov: Nesterov momentum (needs ``momentum > 0``).

    Raises:
        ValueError: for a momentum outside [0, 1), or ``nesterov`` without momentum.

    Example:
        >>> import torch
        >>> opt = SGD(momentum=0.5)
        >>> params, state = {"w": torch.tensor(1.0)}, opt.init({"w": torch.tensor(1.0)})
        >>> for step in range(2):
        ...     params, state = opt.update(params, {"w": torch.tensor(1.0)}, state, lr=0.1, step=step)
        >>> params["w"]  # 1 - 0.1 * 1 - 0.1 * (0.5 * 1 + 1)
        tensor(0.7500)
    """

    def __init__(self, *, momentum: float = 0.0, nesterov: bool = False) -> None:
        super().__init__()
        self.momentum = _check_fraction("SGD", "momentum", momentum)
        if not isinstance(nesterov, bool):
            raise ValueError(f"SGD: nesterov must be True or False, got {nesterov!r}.")
        if nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True needs a momentum > 0, got momentum=0.")
        self.nesterov = nesterov

    @override
    def init_param(self, param: Tensor) -> ParamState:
        return (torch.zeros_like(param),) if self.momentum else ()

    @override
    def update_param(
        self, param: Tensor, grad: Tensor, state: ParamState, *, lr: Rate, step: int
    ) -> tuple[Tensor, ParamState]:
        if not self.momentum:
            return _descend(param, grad, lr), state
        buf = grad if step == 0 else state[0] * self.momentum + grad
        direction = grad + self.momentum * buf if self.nesterov else buf
        return _descend(param, direction, lr), (buf,)


class Adam(InnerOptimizer):
    """Adam (Kingma and Ba, 2015) in the inner loop, as :class:`torch.optim.Adam` computes it, out of place.

    Reptile adapts with Adam and ``betas=(0.0, 0.999)`` (Nichol, Achiam and Schulman, "On First-Order
    Meta-Learning Algorithms", 2018: their Omniglot and mini-ImageNet runs). Each task's adaptation starts from a
    fresh state (zero moments) unless the caller passes one (``state`` and ``first_step`` of
    :func:`~lightning_meta.functional.inner_loop`); the reference Reptile code keeps Adam's moments across tasks,
    which ``Reptile(carry_inner_state=True)`` does.

    The square root of the second moment uses a gradient that is finite where the moment is zero (a parameter whose
    gradient is exactly zero), where ``sqrt``'s own would make the second-order meta-gradient NaN; the values are
    unchanged.

    Args:
        betas: decay rates of the first and second moments, each in [0, 1).
        eps: added to the denominator, > 0.

    Raises:
        ValueError: for betas outside [0, 1) or a non-positive ``eps``.

    Example:
        >>> import torch
        >>> Adam(betas=(0.0, 0.999)).step({"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([3.0, -0.5])}, lr=0.1)
        {'w': tensor([0.9000, 1.1000])}
    """

    def __init__(self, *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__()
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Adam: betas must be two numbers (beta1, beta2), got {betas!r}.")
        self.betas = (_check_fraction("Adam", "betas[0]", betas[0]), _check_fraction("Adam", "betas[1]", betas[1]))
        self.eps = _check_positive("Adam", "eps", eps)

    @override
    def init_param(self, param: Tensor) -> ParamState:
        return (torch.zeros_like(param), torch.zeros_like(param))

    @override
    def update_param(
        self, param: Tensor, grad: Tensor, state: ParamState, *, lr: Rate, step: int
    ) -> tuple[Tensor, ParamState]:
        beta1, beta2 = self.betas
        exp_avg = state[0].lerp(grad, 1 - beta1)
        exp_avg_sq = (state[1] * beta2).addcmul(grad, grad, value=1 - beta2)
        t = step + 1
        bias_correction1 = 1 - beta1**t
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
        positive = exp_avg_sq > 0
        root = torch.where(positive, torch.where(positive, exp_avg_sq, 1.0).sqrt(), 0.0)
        denom = root / bias_correction2_sqrt + self.eps
        if isinstance(lr, Tensor):
            new = param - (lr / bias_correction1) * (exp_avg / denom)
        else:
            new = param.addcdiv(exp_avg, denom, value=-lr / bias_correction1)
        return new, (exp_avg, exp_avg_sq)


class Proximal(InnerOptimizer):
    """Adds a pull towards the starting point to another rule: the inner loop of implicit MAML.

    Each step descends ``loss(phi) + lam / 2 * ||phi - phi_0||^2``, ``phi_0`` the parameters the adaptation
    started from (the meta-learned initialisation): the wrapped rule sees ``grad + lam * (phi - phi_0)``.
    Rajeswaran, Finn, Kakade and Levine, "Meta-Learning with Implicit Gradients", NeurIPS 2019. ``phi_0`` is kept
    in the state, so with second-order unrolling the outer gradient also flows through the pull.

    Args:
        optimizer: the rule that takes the steps.
        lam: the regularisation strength lambda, > 0.

    Example:
        >>> import torch
        >>> opt = Proximal(SGD(), lam=1.0)
        >>> params, state = {"w": torch.tensor(0.0)}, opt.init({"w": torch.tensor(0.0)})
        >>> for step in range(200):  # the minimum of (w - 2)^2 / 2 + (w - 0)^2 / 2 is w = 1
        ...     params, state = opt.update(params, {"w": params["w"] - 2}, state, lr=0.1, step=step)
        >>> round(float(params["w"]), 4)
        1.0
    """

    def __init__(self, optimizer: InnerOptimizer, *, lam: float) -> None:
        super().__init__()
        if not isinstance(optimizer, InnerOptimizer):
            raise ValueError(f"Proximal: optimizer must be an InnerOptimizer, got {type(optimizer).__name__}.")
        self.optimizer = optimizer
        self.lam = _check_positive("Proximal", "lam", lam)

    @override
    def init_param(self, param: Tensor) -> ParamState:
        return (param, *self.optimizer.init_param(param))

    @override
    def update_param(
        self, param: Tensor, grad: Tensor, state: ParamState, *, lr: Rate, step: int
    ) -> tuple[Tensor, ParamState]:
        anchor, inner = state[0], state[1:]
        new, inner = self.optimizer.update_param(param, grad + self.lam * (param - anchor), inner, lr=lr, step=step)
        return new, (anchor, *inner)


__all__ = ["SGD", "Adam", "InnerOptimizer", "OptState", "ParamState", "Proximal", "Rate"]
