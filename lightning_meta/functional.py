"""Pure inner-loop maths on dictionaries of parameters, one task at a time or a whole meta-batch at once.

Everything here goes through :func:`torch.func.functional_call`: parameters in, new parameters out. No function
mutates the module, writes ``.data`` or keeps state; the module only supplies the computation (and any parameter
or buffer that a dictionary leaves out).

* :func:`forward_with` runs a module with given parameters.
* :func:`sgd_step` is one gradient step; :func:`inner_loop` is ``steps`` of them on a task's support loss (MAML,
  Finn et al., 2017). Second order keeps the graph of every step, so an outer ``backward()`` differentiates
  through the adaptation; first order (FOMAML) treats the inner gradients as constants.
* :func:`adapt_batch` and :func:`forward_batch` do the same for the ``T`` tasks of a meta-batch, either together
  under :func:`torch.func.vmap` (``strategy="vmap"``) or one by one (``strategy="loop"``). Both give the same
  numbers, meta-gradients included.
* :func:`mean_task_by_task` averages the tasks' losses while differentiating them one task at a time, so a
  per-task loop holds one task's graph at a time (as learn2learn's loops do) yet returns one meta-loss for
  Lightning's automatic optimization. ``adapt_batch(strategy="loop")`` with :func:`forward_batch` instead keeps
  every task's graph until the outer ``backward()``: ``T`` times the memory (about 320 MB per Conv4 5-way 1-shot
  15-query task at 84x84).

Learning rates (``lr``) take any of these forms:

* a number (or a scalar tensor): one rate for every adapted parameter and step (MAML);
* a mapping ``name -> number or tensor``: a rate per parameter, a scalar or a tensor of the parameter's shape
  (Meta-SGD, Li et al., 2017, learns these); it needs an entry for every adapted parameter;
* a list or tuple of ``steps`` of the above: a rate per step (MAML++'s per-layer per-step rates, Antoniou et al.,
  2019, are ``[{name: rates[name][step] for name in rates} for step in range(steps)]``).

Rates that are tensors requiring grad (learned rates) receive gradients from the outer loss, first order
included.

The update rule is ``optimizer=`` (:mod:`lightning_meta.inner_optim`: ``SGD()`` by default, ``SGD(momentum=...)``,
``Adam(betas=...)``, or your own); it receives the rate of every step, so learned rates work with any rule.

Batch norm inside the inner loop: the backbones of :mod:`lightning_meta.models` normalise with the statistics of
the batch they see (the support set during adaptation, the query set at prediction), in training and in
evaluation alike, as the MAML reference does; see :class:`~lightning_meta.models.BatchStatNorm2d`. A module whose
forward updates buffers in place (``nn.BatchNorm2d`` with running statistics, in training mode) would update them
here too, and fails under vmap; use the backbones of :mod:`lightning_meta.models` or modules without such state.

Gradients: the inner gradients are computed whatever the caller's grad mode (the inner loop needs them), but an
outer graph is kept only when grad mode is on: under :func:`torch.no_grad` the adapted parameters are plain
tensors, so evaluation keeps no graph. Passing ``first_order=True`` at evaluation gives the same adapted
parameters at a lower cost. :func:`torch.inference_mode` (Lightning's default for validation and test) forbids
autograd altogether, so the inner loop refuses to run under it.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lightning_meta.inner_optim import SGD, InnerOptimizer, OptState

Params: TypeAlias = dict[str, Tensor]
"""Tensors by their names in ``module.named_parameters()`` (and ``named_buffers()``)."""

LossFn: TypeAlias = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(outputs, targets)`` returning a scalar, such as :func:`torch.nn.functional.cross_entropy`."""

StepLR: TypeAlias = float | Tensor | Mapping[str, float | Tensor]
"""One learning rate for all parameters, or one per parameter name."""

LR: TypeAlias = StepLR | Sequence[StepLR]
"""A :data:`StepLR` for every step, or a list or tuple with one :data:`StepLR` per step."""

Strategy: TypeAlias = Literal["vmap", "loop"]

_STRATEGIES = ("vmap", "loop")


def forward_with(model: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Run ``model(x)`` with the tensors of ``params`` in place of the module's own, without touching the module.

    Args:
        model: the module that supplies the computation.
        params: tensors by name; any parameter or buffer left out is the module's own.
        x: the input.

    Returns:
        The output of the module.

    Example:
        >>> import torch
        >>> from lightning_meta.models import MLP
        >>> model = MLP()
        >>> params = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
        >>> forward_with(model, params, torch.randn(3, 1)).tolist()
        [[0.0], [0.0], [0.0]]
    """
    return _call(model, params, x, _aliases(model))


#: Per model: ``None`` when no submodule is reachable under two names (almost always), else every name of a
#: parameter or buffer -> the names of the distinct (module, attribute) slots that hold the same tensor.
_ALIASES: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[str, ...]] | None] = weakref.WeakKeyDictionary()


Aliases: TypeAlias = dict[str, tuple[str, ...]] | None


def _aliases(model: nn.Module) -> Aliases:
    """The alias layout of ``model`` (see :data:`_ALIASES`), cached per model.

    Call it eagerly, never inside a function that :func:`torch.compile` traces: dynamo would guard on the position of
    the model in the weak dictionary, and building that guard fails once an earlier model has been garbage-collected.
    The compiled functions receive the layout as an argument instead.
    """
    if model in _ALIASES:
        return _ALIASES[model]
    named = list(model.named_modules(remove_duplicate=False))
    aliases: dict[str, tuple[str, ...]] | None = None
    if len(named) != len({id(m) for _, m in named}):
        slot_names: dict[tuple[int, str], list[str]] = {}  # (module, attribute) -> every name that reaches it
        tensor_slots: dict[int, list[tuple[int, str]]] = {}  # tensor -> its distinct slots, in order
        for prefix, module in named:
            for attr, tensor in (*module._parameters.items(), *module._buffers.items()):
                if tensor is None:
                    continue
                slot = (id(module), attr)
                if slot not in slot_names:
                    slot_names[slot] = []
                    tensor_slots.setdefault(id(tensor), []).append(slot)
                slot_names[slot].append(f"{prefix}.{attr}" if prefix else attr)
        aliases = {}
        for slots in tensor_slots.values():
            distinct = tuple(slot_names[slot][0] for slot in slots)
            for slot in slots:
                for name in slot_names[slot]:
                    aliases[name] = distinct
    _ALIASES[model] = aliases
    return aliases


def _call(
    model: nn.Module, tensors: Mapping[str, Tensor] | tuple[Mapping[str, Tensor], ...], x: Tensor, aliases: Aliases
) -> Tensor:
    """``functional_call(model, tensors, (x,))``, also for a model that holds one submodule under two names.

    ``torch.func.functional_call`` swaps such a submodule's tensors twice and restores the wrong ones
    (pytorch/pytorch#164759: learn2learn's ``OmniglotCNN`` is such a model); here each (module, attribute) slot is
    given once, and weights genuinely tied across two slots are given to both. ``aliases`` is ``_aliases(model)``,
    looked up by the caller outside any compiled function.
    """
    if aliases is None:
        return functional_call(model, tensors if isinstance(tensors, tuple) else dict(tensors), (x,))  # type: ignore[arg-type]
    merged: dict[str, Tensor] = {}
    for part in tensors if isinstance(tensors, tuple) else (tensors,):
        merged.update(part)
    expanded = {alias: tensor for name, tensor in merged.items() for alias in aliases.get(name, (name,))}
    return functional_call(model, expanded, (x,), tie_weights=False)


def sgd_step(
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor | None],
    lr: StepLR,
    *,
    names: Collection[str] | None = None,
) -> Params:
    """One step of gradient descent, out of place: ``params[name] - lr[name] * grads[name]``.

    Args:
        params: the current parameters.
        grads: their gradients (a missing or ``None`` gradient leaves the parameter unchanged).
        lr: one learning rate, or a mapping from name to a rate (a scalar or a tensor of the parameter's shape).
        names: the parameters to update (default: every name in ``grads``); the others are passed through.

    Returns:
        A new dictionary with every entry of ``params``, the updated ones replaced.

    Raises:
        ValueError: if a name to update is missing from ``params`` or from a mapping ``lr``.

    Example:
        >>> import torch
        >>> params = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)}
        >>> grads = {"w": torch.tensor([1.0, -1.0]), "b": torch.tensor(1.0)}
        >>> sgd_step(params, grads, 0.5, names=["w"])
        {'w': tensor([0.5000, 2.5000]), 'b': tensor(3.)}
        >>> sgd_step(params, grads, {"w": torch.tensor([1.0, 0.0]), "b": 2.0})
        {'w': tensor([0., 2.]), 'b': tensor(1.)}
    """
    names = grads.keys() if names is None else _check_names(names, params, "sgd_step")
    _check_lr(lr, names, "sgd_step")
    new = dict(params)
    for name in names:
        g = grads.get(name)
        if g is not None:
            new[name] = _descend(params[name], g, lr[name] if isinstance(lr, Mapping) else lr)
    return new


def inner_loop(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn,
    steps: int,
    lr: LR,
    first_order: bool = False,
    names: Collection[str] | None = None,
    return_all: bool = False,
    optimizer: InnerOptimizer | None = None,
    batch_size: int | None = None,
    state: OptState | None = None,
    first_step: int = 0,
    return_state: bool = False,
) -> Params | list[Params] | tuple[Params | list[Params], OptState]:
    """Adapt ``params`` to one task: ``steps`` steps of gradient descent on ``loss_fn(model(x), y)``.

    This is the inner loop of MAML (Finn et al., 2017): with ``first_order=False`` each step keeps its graph
    (``create_graph=True``), so a loss on the adapted parameters back-propagates to ``params`` through the
    adaptation (second-order MAML); with ``first_order=True`` the inner gradients are constants (FOMAML), and the
    gradient of that loss with respect to ``params`` is its gradient at the adapted parameters.

    Args:
        model: the module that supplies the computation.
        params: the initial parameters (usually ``dict(model.named_parameters())``).
        x: support inputs of the task.
        y: support targets.
        loss_fn: ``loss_fn(outputs, targets)``, a scalar (the mean over the support set).
        steps: number of gradient steps (0 returns the parameters unchanged).
        lr: learning rates (see the module documentation: one, per parameter, per step).
        first_order: cut the graph through the inner gradients.
        names: the parameters to adapt (default: all of ``params``); the others stay the very same tensors. ANIL
            adapts ``[n for n in params if n.startswith("head.")]``.
        return_all: return the parameters after every step, not only the last (MAML++'s multi-step loss).
        optimizer: the update rule (:mod:`lightning_meta.inner_optim`; default ``SGD()``, plain gradient descent),
            given ``lr`` at every step. Its state starts fresh for the task; second order flows through it.
        batch_size: examples per step (Reptile's inner mini-batches); ``None``: the whole support set every step.
            Step ``k`` takes the examples at positions ``k * batch_size`` to ``(k + 1) * batch_size - 1`` modulo
            ``len(x)``: the steps cycle through the support set in its order (a batch may wrap around into the next
            pass). Episodes of :class:`~lightning_meta.data.EpisodicDataModule` list the support set in a random
            order, so consecutive batches mix the classes.
        state: the optimizer's state to start from (``optimizer.init`` of the adapted parameters, or a state an
            earlier adaptation returned; an entry for every adapted name); default a fresh one. Reptile's reference
            code carries Adam's moments from task to task this way (:class:`~lightning_meta.learners.Reptile`,
            ``carry_inner_state``).
        first_step: the number of the first step (Adam's bias corrections and momentum's first step depend on
            it): 0 for a fresh state, the steps taken so far for a carried one.
        return_state: also return the optimizer's state after the last step.

    Returns:
        The adapted parameters (every entry of ``params``), or with ``return_all`` a list of ``steps`` such
        dictionaries, after steps 1 to ``steps``; with ``return_state``, a pair of that and the final state.

    Raises:
        ValueError: for a negative ``steps``, an unknown name, learning rates that do not fit, or a ``state``
            without an entry for an adapted parameter.
        RuntimeError: under :func:`torch.inference_mode`, where autograd cannot run.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from lightning_meta.models import MLP
        >>> _ = torch.manual_seed(0)
        >>> model = MLP()
        >>> params = dict(model.named_parameters())
        >>> x = torch.linspace(-5, 5, 10).unsqueeze(1)
        >>> y = 2 * torch.sin(x)
        >>> adapted = inner_loop(model, params, x, y, loss_fn=F.mse_loss, steps=5, lr=0.01)
        >>> F.mse_loss(forward_with(model, adapted, x), y) < F.mse_loss(model(x), y)
        tensor(True)
        >>> F.mse_loss(forward_with(model, adapted, x), y).backward()  # second order, back to the parameters
        >>> model.head.weight.grad.shape
        torch.Size([1, 40])
    """
    plan = _Plan.make("inner_loop", params, steps, lr, names, optimizer, batch_size)
    start = _initial_state("inner_loop", plan, params, state, first_step)
    trace, final = _adapt(
        model,
        plan,
        params,
        x,
        y,
        loss_fn,
        _aliases(model),
        first_order=first_order,
        functorch=False,
        keep_all=return_all,
        state=start,
        first_step=first_step,
    )
    adapted: Params | list[Params]
    if return_all:
        adapted = [{**params, **fast} for fast in trace]
    else:
        adapted = {**params, **trace[-1]} if trace else dict(params)
    return (adapted, final) if return_state else adapted


def adapt_batch(
    model: nn.Module,
    params: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    *,
    loss_fn: LossFn,
    steps: int,
    lr: LR,
    first_order: bool = False,
    names: Collection[str] | None = None,
    return_all: bool = False,
    strategy: Strategy = "vmap",
    compiled: bool = False,
    optimizer: InnerOptimizer | None = None,
    batch_size: int | None = None,
    state: OptState | None = None,
    first_step: int = 0,
    return_state: bool = False,
) -> Params | list[Params] | tuple[Params | list[Params], OptState]:
    """Adapt ``params`` to each of the ``T`` tasks of a meta-batch, as :func:`inner_loop` does for one task.

    ``strategy="vmap"`` adapts all tasks at once under :func:`torch.func.vmap` (much faster for small models,
    whose cost is per-operation overhead; convolutions become grouped ones and keep every task's activations);
    ``strategy="loop"`` adapts them one after the other. Both return the same numbers and meta-gradients.

    Args:
        model: the module that supplies the computation.
        params: the initial parameters, shared by all tasks.
        support_x: support inputs, ``[T, n_support, ...]``.
        support_y: support targets, ``[T, n_support, ...]``.
        loss_fn: ``loss_fn(outputs, targets)`` for one task, a scalar.
        steps: number of gradient steps.
        lr: learning rates (see the module documentation); the same for every task.
        first_order: cut the graph through the inner gradients.
        names: the parameters to adapt (default: all of ``params``).
        return_all: return the parameters after every step (a list of ``steps`` dictionaries).
        strategy: ``"vmap"`` or ``"loop"``.
        compiled: run the adaptation (of the whole meta-batch under ``"vmap"``, of each task under ``"loop"``)
            through :func:`torch.compile`. Its gradients are then taken with :func:`torch.func.grad`, which
            ``torch.compile`` traces into one graph that autograd differentiates again, so second order works
            (``torch.autograd.grad(create_graph=True)`` inside a compiled function would not: its backward cannot
            be differentiated twice). The first call of each shape compiles (seconds to a minute on a CPU).
        optimizer: the update rule (see :func:`inner_loop`); each task starts from a fresh state, or from ``state``.
        batch_size: examples per step, cycling through each task's support set (see :func:`inner_loop`).
        state: the optimizer's state every task starts from, shared as ``params`` are (see :func:`inner_loop`);
            default a fresh one.
        first_step: the number of every task's first step (see :func:`inner_loop`). Not with ``compiled``: the
            step number is a constant of the compiled graph, so each new value would compile again.
        return_state: also return each task's optimizer state after its last step (a leading task dimension on
            every tensor).

    Returns:
        Every entry of ``params``: each adapted parameter with a leading task dimension ``[T, *shape]``, the
        others (not adapted, or ``steps=0``) the very same shared tensors, without that dimension. Pass it to
        :func:`forward_batch`. With ``return_all``, a list of ``steps`` such dictionaries. With ``return_state``,
        a pair of that and the tasks' final states.

    Raises:
        ValueError: for an unknown strategy, mismatched task dimensions, or the errors of :func:`inner_loop`.
        RuntimeError: under :func:`torch.inference_mode`.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from lightning_meta.models import MLP
        >>> model = MLP()
        >>> params = dict(model.named_parameters())
        >>> support_x, query_x = torch.randn(4, 10, 1), torch.randn(4, 15, 1)
        >>> support_y = torch.sin(support_x)
        >>> head = ["head.weight", "head.bias"]
        >>> adapted = adapt_batch(model, params, support_x, support_y, loss_fn=F.mse_loss, steps=2, lr=0.01, names=head)
        >>> adapted["head.weight"].shape, adapted["body.0.weight"] is params["body.0.weight"]
        (torch.Size([4, 1, 40]), True)
        >>> forward_batch(model, adapted, query_x).shape
        torch.Size([4, 15, 1])
    """
    _check_strategy(strategy, "adapt_batch")
    _check_tasks("adapt_batch", support_x, support_y)
    plan = _Plan.make("adapt_batch", params, steps, lr, names, optimizer, batch_size)
    start = _initial_state("adapt_batch", plan, params, state, first_step)
    if compiled and first_step != 0:
        raise ValueError(
            f"adapt_batch: compiled=True needs first_step=0, got first_step={first_step}: the step number is a "
            "constant of the compiled graph, so every new value would compile again. Adapt without compiled."
        )
    if steps == 0:
        empty: Params | list[Params] = [] if return_all else dict(params)
        n_tasks = support_x.shape[0]
        kept = {name: tuple(t.expand(n_tasks, *t.shape) for t in start[name]) for name in plan.names}
        return (empty, kept) if return_state else empty
    aliases = _aliases(model)  # outside the compiled functions: they must read no module-level state
    if strategy == "loop":
        if compiled:  # torch.func.grad inside: a compiled graph that autograd can differentiate twice
            adapt_task = functools.partial(
                _compile(_adapt), first_order=_cut_graph(first_order), functorch=True, keep_all=return_all
            )
        else:
            adapt_task = functools.partial(_adapt, first_order=first_order, functorch=False, keep_all=return_all)
        per_task = [adapt_task(model, plan, params, x, y, loss_fn, aliases, state=start, first_step=first_step)
                    for x, y in zip(support_x.unbind(0), support_y.unbind(0), strict=True)]  # fmt: skip
        kept_steps = range(steps) if return_all else [-1]
        trace = [{name: torch.stack([task[step][name] for task, _ in per_task]) for name in plan.names}
                 for step in kept_steps]  # fmt: skip
        final = {name: tuple(torch.stack(ts) for ts in zip(*(s[name] for _, s in per_task), strict=True))
                 for name in plan.names}  # fmt: skip
    else:
        adapt_tasks = _compile(_adapt_tasks_vmap) if compiled else _adapt_tasks_vmap
        trace, final = adapt_tasks(
            model, plan, params, support_x, support_y, loss_fn, aliases, _cut_graph(first_order), return_all,
            start, first_step,
        )  # fmt: skip
    adapted = [{**params, **fast} for fast in trace] if return_all else {**params, **trace[-1]}
    return (adapted, final) if return_state else adapted


def _adapt_tasks_vmap(
    model: nn.Module, plan: _Plan, params: Mapping[str, Tensor], support_x: Tensor, support_y: Tensor,
    loss_fn: LossFn, aliases: Aliases, first_order: bool, return_all: bool, state: OptState, first_step: int,
) -> tuple[list[Params], OptState]:  # fmt: skip
    """Every task's adaptation at once under :func:`torch.func.vmap`; ``first_order`` already through _cut_graph."""
    fixed = _fixed(params, plan.names, detached=first_order)

    def adapt_task(x: Tensor, y: Tensor) -> tuple[list[Params], OptState]:
        trace, final = _adapt(
            model,
            plan,
            params,
            x,
            y,
            loss_fn,
            aliases,
            first_order=first_order,
            functorch=True,
            fixed=fixed,
            keep_all=return_all,
            state=state,
            first_step=first_step,
        )
        return (trace if return_all else trace[-1:]), final

    return vmap(adapt_task, randomness="different")(support_x, support_y)  # type: ignore[no-any-return]


_COMPILED: dict[Callable[..., Any], Callable[..., Any]] = {}


def _compile(function: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(function)``, made once per function (torch.compile keeps one cache per code object)."""
    if function not in _COMPILED:
        _COMPILED[function] = torch.compile(function)
    return _COMPILED[function]


def forward_batch(
    model: nn.Module,
    adapted: Mapping[str, Tensor],
    query_x: Tensor,
    *,
    strategy: Strategy = "vmap",
) -> Tensor:
    """Run each task's query inputs through the model with that task's parameters, as returned by :func:`adapt_batch`.

    A tensor of ``adapted`` with one dimension more than the module's tensor of that name holds one value per task
    (leading dimension ``T``); any other is shared by all tasks. Names left out are the module's own.

    Args:
        model: the module that supplies the computation.
        adapted: per-task and shared tensors by name.
        query_x: inputs, ``[T, n_query, ...]``.
        strategy: ``"vmap"`` or ``"loop"`` (the same numbers; ``adapt_batch``'s strategy need not match).

    Returns:
        The outputs, ``[T, n_query, ...]``.

    Raises:
        ValueError: for an unknown strategy or a per-task tensor whose task dimension does not match ``query_x``.
    """
    _check_strategy(strategy, "forward_batch")
    per_task, shared = _split_per_task(model, adapted)
    aliases = _aliases(model)
    n_tasks = query_x.shape[0]
    for name, tensor in per_task.items():
        if tensor.shape[0] != n_tasks:
            raise ValueError(
                f"forward_batch: {name!r} holds {tensor.shape[0]} tasks but query_x holds {n_tasks} "
                f"(query_x shape {tuple(query_x.shape)})."
            )
    if strategy == "loop":
        unbound = {name: tensor.unbind(0) for name, tensor in per_task.items()}
        return torch.stack(
            [
                _call(model, {**shared, **{name: t[i] for name, t in unbound.items()}}, x, aliases)
                for i, x in enumerate(query_x.unbind(0))
            ]
        )

    def forward_task(task_params: Params, x: Tensor) -> Tensor:
        return _call(model, (task_params, shared), x, aliases)

    return vmap(forward_task, randomness="different")(per_task, query_x)


def mean_task_by_task(task_losses: Iterable[Tensor], wrt: Sequence[Tensor]) -> Tensor:
    """The mean of the tasks' losses, differentiated one task at a time so that one task's graph lives at a time.

    Each loss is differentiated with respect to ``wrt`` as soon as the iterable yields it, and its graph is freed;
    the result is a scalar equal to the mean of the losses whose gradient with respect to ``wrt`` is the mean of
    the tasks' gradients (a surrogate ``sum(t * g)`` carries them). Call ``backward()`` on it, or return it from
    ``training_step``: automatic optimization, gradient clipping, accumulation and DDP's all-reduce see an
    ordinary loss. Pass a generator that builds each task's loss lazily, or nothing is saved.

    Gradients reach only the tensors in ``wrt`` (list every parameter and learned learning rate; those that do
    not require grad are skipped). Under fp16 mixed precision the per-task gradients are not loss-scaled (the
    scaler only scales the returned surrogate), so small gradients may underflow; bfloat16 or float32 are safe.
    Under :func:`torch.no_grad` it only averages.

    Args:
        task_losses: one scalar loss per task (for MAML, the task's query loss after adaptation).
        wrt: the tensors the meta-gradient flows to.

    Returns:
        The mean loss, carrying the mean gradient.

    Raises:
        ValueError: if ``task_losses`` yields nothing or a non-scalar.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from lightning_meta.models import MLP
        >>> model = MLP()
        >>> params = dict(model.named_parameters())
        >>> x, y = torch.randn(3, 20, 1), torch.randn(3, 20, 1)
        >>> def losses():
        ...     for task in range(3):
        ...         adapted = inner_loop(model, params, x[task, :10], y[task, :10], loss_fn=F.mse_loss, steps=1, lr=0.1)
        ...         yield F.mse_loss(forward_with(model, adapted, x[task, 10:]), y[task, 10:])
        >>> loss = mean_task_by_task(losses(), wrt=list(model.parameters()))
        >>> loss.backward()
        >>> model.head.weight.grad.shape
        torch.Size([1, 40])
    """
    wrt = [t for t in wrt if t.requires_grad] if torch.is_grad_enabled() else []
    total: Tensor | None = None
    sums: list[Tensor | None] = [None] * len(wrt)
    count = 0
    for loss in task_losses:
        if loss.dim() != 0:
            raise ValueError(f"mean_task_by_task: each task loss must be a scalar, got shape {tuple(loss.shape)}.")
        if wrt and loss.requires_grad:
            grads = torch.autograd.grad(loss, wrt, allow_unused=True)
            sums = [s if g is None else g if s is None else s + g for s, g in zip(sums, grads, strict=True)]
        total = loss.detach() if total is None else total + loss.detach()
        count += 1
    if total is None:
        raise ValueError("mean_task_by_task: task_losses yielded no loss; a meta-batch needs at least one task.")
    mean = total / count
    terms = [(t * (s / count)).sum() for t, s in zip(wrt, sums, strict=True) if s is not None]
    if not terms:
        return mean
    surrogate = sum(terms[1:], terms[0])
    return mean + (surrogate - surrogate.detach())


# ---------------------------------------------------------------------------------------------------------------
# Internals.


class _Plan(NamedTuple):
    """What an adaptation does: which parameters it adapts, the learning rate of every step, and the update rule."""

    names: tuple[str, ...]
    lrs: tuple[StepLR, ...]
    optimizer: InnerOptimizer
    batch_size: int | None = None

    @staticmethod
    def make(
        caller: str,
        params: Mapping[str, Tensor],
        steps: int,
        lr: LR,
        names: Collection[str] | None,
        optimizer: InnerOptimizer | None = None,
        batch_size: int | None = None,
    ) -> _Plan:
        if optimizer is None:
            optimizer = _DEFAULT_OPTIMIZER
        elif not isinstance(optimizer, InnerOptimizer):
            raise ValueError(
                f"{caller}: optimizer must be an InnerOptimizer of lightning_meta.inner_optim (SGD, Adam, ...), got "
                f"{type(optimizer).__name__}."
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{caller}: steps must be a non-negative integer, got {steps!r}.")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"{caller}: batch_size must be a positive integer or None (the whole support set), got "
                             f"{batch_size!r}.")  # fmt: skip
        chosen = tuple(params) if names is None else tuple(_check_names(names, params, caller))
        if isinstance(lr, (list, tuple)):
            if len(lr) != steps:
                raise ValueError(
                    f"{caller}: a list or tuple lr gives one learning rate per step, so it needs steps={steps} "
                    f"entries; got {len(lr)}."
                )
            lrs = tuple(lr)
        else:
            lrs = (lr,) * steps  # type: ignore[assignment]
        for step_lr in lrs:
            _check_lr(step_lr, chosen, caller)
        return _Plan(chosen, lrs, optimizer, batch_size)


_DEFAULT_OPTIMIZER = SGD()


def _initial_state(
    caller: str, plan: _Plan, params: Mapping[str, Tensor], state: OptState | None, first_step: int
) -> OptState:
    """The optimizer state adaptation starts from: ``state`` checked, or a fresh one."""
    if isinstance(first_step, bool) or not isinstance(first_step, int) or first_step < 0:
        raise ValueError(f"{caller}: first_step must be a non-negative integer, got {first_step!r}.")
    if state is None:
        return plan.optimizer.init({name: params[name] for name in plan.names})
    missing = [name for name in plan.names if name not in state]
    if missing:
        raise ValueError(f"{caller}: state needs an entry for every adapted parameter; missing {missing}.")
    return {name: tuple(state[name]) for name in plan.names}


def _check_names(names: Collection[str], params: Mapping[str, Tensor], caller: str) -> Collection[str]:
    if isinstance(names, str):
        raise ValueError(f"{caller}: names must be a collection of parameter names, got the string {names!r}.")
    unknown = [name for name in names if name not in params]
    if unknown:
        raise ValueError(f"{caller}: names {unknown} are not in params (which holds {list(params)}).")
    return names


def _check_lr(lr: StepLR, names: Collection[str], caller: str) -> None:
    if isinstance(lr, Mapping):
        missing = [name for name in names if name not in lr]
        if missing:
            raise ValueError(
                f"{caller}: a learning-rate mapping needs an entry for every adapted parameter; missing {missing}."
            )
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float, Tensor)):
        raise ValueError(
            f"{caller}: lr must be a number, a tensor, a mapping from parameter name to rate, or a list of those "
            f"(one per step); got {type(lr).__name__}."
        )


def _check_strategy(strategy: str, caller: str) -> None:
    if strategy not in _STRATEGIES:
        raise ValueError(f"{caller}: strategy must be one of {_STRATEGIES}, got {strategy!r}.")


def _check_tasks(caller: str, *tensors: Tensor) -> None:
    sizes = {t.shape[0] if t.dim() > 0 else None for t in tensors}
    if len(sizes) != 1 or None in sizes:
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise ValueError(f"{caller}: inputs and targets need the same leading task dimension T, got shapes {shapes}.")


def _cut_graph(first_order: bool) -> bool:
    """Whether the inner gradients are constants: first order, or no outer graph wanted (grad mode off)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "The inner loop needs autograd, which torch.inference_mode forbids (Lightning evaluates under it by "
            "default). Run it under `torch.inference_mode(False)` and `torch.enable_grad()` with inputs created "
            "outside inference mode (or cloned there), or pass `Trainer(inference_mode=False)`."
        )
    return first_order or not torch.is_grad_enabled()


def _fixed(params: Mapping[str, Tensor], names: Collection[str], *, detached: bool) -> Params:
    """The parameters that are not adapted, detached when the inner gradients are constants."""
    return {name: t.detach() if detached else t for name, t in params.items() if name not in names}


def _descend(param: Tensor, grad_: Tensor | None, lr: float | Tensor) -> Tensor:
    if grad_ is None:  # the loss does not depend on this parameter
        return param
    if isinstance(lr, Tensor):
        return param - lr * grad_
    return param.sub(grad_, alpha=lr)


def _adapt(
    model: nn.Module,
    plan: _Plan,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    aliases: Aliases,
    *,
    first_order: bool,
    functorch: bool,
    fixed: Params | None = None,
    keep_all: bool = True,
    state: OptState | None = None,
    first_step: int = 0,
) -> tuple[list[Params], OptState]:
    """The adapted parameters (only ``plan.names``) after every step, and the optimizer's state after the last.

    Only the last step's parameters with ``keep_all=False``. The optimizer starts from ``state`` (default a fresh
    one) and numbers its steps from ``first_step``.

    ``functorch=False`` takes the gradients with :func:`torch.autograd.grad` (and checks the grad mode itself);
    ``functorch=True`` with :func:`torch.func.grad`, which also works under :func:`torch.func.vmap` and inside
    :func:`torch.compile` (the caller has then applied :func:`_cut_graph`; under vmap it passes ``fixed``, the
    parameters not adapted, made once outside).
    """
    if not functorch:
        first_order = _cut_graph(first_order)
    if fixed is None:
        fixed = _fixed(params, plan.names, detached=first_order)
    fast = {name: params[name] for name in plan.names}
    state = plan.optimizer.init(fast) if state is None else {name: state[name] for name in plan.names}
    trace = []
    for step, lr in enumerate(plan.lrs):
        xs, ys = (x, y) if plan.batch_size is None else _mini_batch(x, y, step, plan.batch_size)
        if functorch:
            grads = _grads_functorch(model, fast, fixed, xs, ys, loss_fn, aliases, first_order)
        else:
            grads = _grads_autograd(model, fast, fixed, xs, ys, loss_fn, aliases, first_order)
        fast, state = plan.optimizer.update(fast, grads, state, lr=lr, step=first_step + step)
        if keep_all:
            trace.append(fast)
        else:  # without a graph (first order, no_grad) earlier steps' tensors are then freed at once
            trace = [fast]
    return trace, state


def _mini_batch(x: Tensor, y: Tensor, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """The examples of inner step ``step``: positions ``step * batch_size ...`` of the support set, cyclically."""
    index = (torch.arange(batch_size, device=x.device) + step * batch_size) % x.shape[0]
    return x[index], y[index]


def _grads_autograd(
    model: nn.Module,
    fast: Params,
    fixed: Params,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    aliases: Aliases,
    first_order: bool,
) -> dict[str, Tensor | None]:
    with torch.enable_grad():
        if first_order:
            inputs = {name: p.detach().requires_grad_() for name, p in fast.items()}
        else:
            inputs = {name: p if p.requires_grad else p.detach().requires_grad_() for name, p in fast.items()}
        loss = loss_fn(_call(model, (inputs, fixed), x, aliases), y)
        grads = torch.autograd.grad(loss, tuple(inputs.values()), create_graph=not first_order, allow_unused=True)
    return dict(zip(inputs, grads, strict=True))


def _grads_functorch(
    model: nn.Module,
    fast: Params,
    fixed: Params,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    aliases: Aliases,
    first_order: bool,
) -> dict[str, Tensor | None]:
    def support_loss(inputs: Params) -> Tensor:
        return loss_fn(_call(model, (inputs, fixed), x, aliases), y)

    if first_order:
        fast = {name: p.detach() for name, p in fast.items()}
    return grad(support_loss)(fast)


def _split_per_task(model: nn.Module, tensors: Mapping[str, Tensor]) -> tuple[Params, Params]:
    """Split into per-task tensors (one dimension more than the module's) and shared ones."""
    reference: Params = dict(model.named_parameters())
    reference.update(model.named_buffers())
    per_task: Params = {}
    shared: Params = {}
    for name, tensor in tensors.items():
        if name not in reference:
            raise ValueError(f"forward_batch: {name!r} is not a parameter or buffer of the model.")
        (per_task if tensor.dim() == reference[name].dim() + 1 else shared)[name] = tensor
    return per_task, shared


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces of the metric learners (ProtoNet, MatchingNet, R2D2, SNAIL, your own).


def embed(backbone: nn.Module, x: Tensor) -> Tensor:
    """Embed the examples of every task of a meta-batch, one backbone call per task.

    One call per task keeps the tasks independent when the backbone normalises with batch statistics (the
    :class:`~lightning_meta.models.BatchStatNorm2d` of ``Conv4``, or any batch norm in training mode): a task's
    predictions never depend on the other tasks of its meta-batch, so evaluation results do not depend on
    ``eval_tasks_per_batch``. (One call over all tasks would normalise across tasks.)

    Args:
        backbone: maps ``[n, *input_shape]`` to ``[n, *feature_shape]``.
        x: inputs ``[n_tasks, n, *input_shape]``.

    Returns:
        Flattened features ``[n_tasks, n, features]``.
    """
    return torch.stack([backbone(task).flatten(1) for task in x.unbind(0)])


def class_means(features: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Mean feature of every class of every task, without a device sync.

    Args:
        features: ``[n_tasks, n_support, features]``.
        labels: ``[n_tasks, n_support]`` labels in ``0..ways-1``, each label present in every task.
        ways: number of classes per task.

    Returns:
        ``[n_tasks, ways, features]``.
    """
    one_hot = F.one_hot(labels, ways).to(features.dtype)  # [T, S, W]
    sums = one_hot.transpose(1, 2) @ features  # [T, W, D]
    return sums / one_hot.sum(1).unsqueeze(-1)
