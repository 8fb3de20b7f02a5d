"""The functional inner loop: meta-gradients against finite differences, the first-order identity and learn2learn;
vmap against the per-task loop; purity, the name filter, learned learning rates, grad modes and argument checks.

Everything numeric runs in float64 on tiny models, so "equal" means equal to ~1e-10.
"""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_meta.functional as functional_module
from lightning_meta.functional import (
    adapt_batch,
    forward_batch,
    forward_with,
    inner_loop,
    mean_task_by_task,
    sgd_step,
)
from lightning_meta.models import MLP, Conv4
from tests.helpers.learn2learn import l2l, needs_l2l

TOL = 1e-10


def tiny_mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(in_features=1, hidden=(6, 5), out_features=1).double()


def tiny_conv4(seed: int = 0) -> Conv4:
    torch.manual_seed(seed)
    return Conv4(in_channels=1, hidden=4, out_features=3, image_size=16).double()


def regression_batch(n_tasks: int = 3, shots: int = 5, queries: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    amplitude = 0.5 + 2 * torch.rand(n_tasks, 1, 1, generator=g, dtype=torch.float64)
    phase = torch.rand(n_tasks, 1, 1, generator=g, dtype=torch.float64)
    support_x = 4 * torch.rand(n_tasks, shots, 1, generator=g, dtype=torch.float64) - 2
    query_x = 4 * torch.rand(n_tasks, queries, 1, generator=g, dtype=torch.float64) - 2
    return support_x, amplitude * torch.sin(support_x - phase), query_x, amplitude * torch.sin(query_x - phase)


def image_batch(n_tasks: int = 3, ways: int = 3, shots: int = 2, queries: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    support_x = torch.randn(n_tasks, ways * shots, 1, 16, 16, generator=g, dtype=torch.float64)
    query_x = torch.randn(n_tasks, ways * queries, 1, 16, 16, generator=g, dtype=torch.float64)
    support_y = torch.arange(ways).repeat_interleave(shots).expand(n_tasks, -1)
    query_y = torch.arange(ways).repeat_interleave(queries).expand(n_tasks, -1)
    return support_x, support_y, query_x, query_y


CASES = {
    "mlp": (tiny_mlp, regression_batch, F.mse_loss),
    "conv4": (tiny_conv4, image_batch, F.cross_entropy),
}


def meta_loss(model, params, batch, loss_fn, *, strategy="vmap", forward_strategy=None, **adapt_kwargs):
    """Mean query loss over the tasks after adaptation (the MAML meta-objective)."""
    support_x, support_y, query_x, query_y = batch
    adapted = adapt_batch(model, params, support_x, support_y, loss_fn=loss_fn, strategy=strategy, **adapt_kwargs)
    outputs = forward_batch(model, adapted, query_x, strategy=forward_strategy or strategy)
    return torch.stack([loss_fn(o, y) for o, y in zip(outputs, query_y, strict=True)]).mean()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def test_second_order_meta_gradient_matches_finite_differences():
    """d(meta-loss)/d(initial parameters) through 2 inner steps equals central differences of the meta-loss."""
    model = tiny_mlp()
    batch = regression_batch(n_tasks=2)
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    kwargs = dict(steps=2, lr=0.1, first_order=False)

    leaves = {name: p.clone().requires_grad_() for name, p in params.items()}
    analytic = torch.autograd.grad(meta_loss(model, leaves, batch, F.mse_loss, **kwargs), list(leaves.values()))

    eps = 1e-6
    numeric = []
    with torch.no_grad():
        for name, p in params.items():
            g = torch.zeros_like(p)
            for i in range(p.numel()):
                shifted = {k: v.clone() for k, v in params.items()}
                shifted[name].view(-1)[i] += eps
                up = meta_loss(model, shifted, batch, F.mse_loss, **kwargs)
                shifted[name].view(-1)[i] -= 2 * eps
                down = meta_loss(model, shifted, batch, F.mse_loss, **kwargs)
                g.view(-1)[i] = (up - down) / (2 * eps)
            numeric.append(g)
    assert relative_error(flat(analytic), flat(numeric)) < 1e-7


def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_weights():
    """FOMAML: the meta-gradient is d(query loss)/d(adapted weights), summed over tasks (here: averaged)."""
    model = tiny_mlp()
    support_x, support_y, query_x, query_y = batch = regression_batch()
    params = dict(model.named_parameters())
    for strategy in ("vmap", "loop"):
        meta = torch.autograd.grad(
            meta_loss(model, params, batch, F.mse_loss, steps=3, lr=0.1, first_order=True, strategy=strategy),
            list(params.values()),
        )
        expected = [torch.zeros_like(p) for p in params.values()]
        for task in range(len(support_x)):
            adapted = inner_loop(model, params, support_x[task], support_y[task], loss_fn=F.mse_loss, steps=3, lr=0.1)
            at = {name: p.detach().requires_grad_() for name, p in adapted.items()}
            loss = F.mse_loss(forward_with(model, at, query_x[task]), query_y[task]) / len(support_x)
            for total, g in zip(expected, torch.autograd.grad(loss, list(at.values())), strict=True):
                total += g
        assert relative_error(flat(meta), flat(expected)) < TOL, strategy
        # ... and it differs from second order, which the test would otherwise not tell apart.
        second = torch.autograd.grad(
            meta_loss(model, params, batch, F.mse_loss, steps=3, lr=0.1, strategy=strategy), list(params.values())
        )
        assert relative_error(flat(second), flat(expected)) > 1e-4


def learning_rates(kind: str, params, steps: int):
    """Learning rates of each supported form; learned ones are leaf tensors that require grad."""
    if kind == "float":
        return 0.05, []
    if kind == "per_parameter":  # Meta-SGD: a rate per weight
        lrs = {name: (0.02 + 0.06 * torch.rand_like(p)).requires_grad_() for name, p in params.items()}
        return lrs, list(lrs.values())
    if kind == "per_step":  # MAML++ LSLR: a rate per layer and step
        lrs = {name: torch.linspace(0.06, 0.02, steps, dtype=p.dtype).requires_grad_() for name, p in params.items()}
        return [{name: rates[step] for name, rates in lrs.items()} for step in range(steps)], list(lrs.values())
    raise AssertionError(kind)


@pytest.mark.parametrize("lr_kind", ["float", "per_parameter", "per_step"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("case", list(CASES))
def test_vmap_and_loop_give_the_same_meta_gradients(case, first_order, steps, lr_kind):
    make_model, make_batch, loss_fn = CASES[case]
    model, batch = make_model(), make_batch()
    params = dict(model.named_parameters())
    lr, learned = learning_rates(lr_kind, params, steps)
    kwargs = dict(steps=steps, lr=lr, first_order=first_order)
    wrt = list(params.values()) + learned

    results = {}
    for strategy in ("vmap", "loop"):
        loss = meta_loss(model, params, batch, loss_fn, strategy=strategy, **kwargs)
        results[strategy] = (loss.detach(), flat(torch.autograd.grad(loss, wrt)))
    assert relative_error(results["vmap"][0], results["loop"][0]) < TOL
    assert relative_error(results["vmap"][1], results["loop"][1]) < TOL
    assert results["loop"][1].abs().max() > 0


@pytest.mark.parametrize("case", list(CASES))
def test_adapted_parameters_and_outputs_agree_across_strategies(case):
    """Each strategy's adapted parameters work with either strategy's forward, and equal the single-task loop."""
    make_model, make_batch, loss_fn = CASES[case]
    model = make_model()
    support_x, support_y, query_x, _ = make_batch()
    params = dict(model.named_parameters())
    kwargs = dict(loss_fn=loss_fn, steps=2, lr=0.1)
    by_vmap = adapt_batch(model, params, support_x, support_y, strategy="vmap", **kwargs)
    by_loop = adapt_batch(model, params, support_x, support_y, strategy="loop", **kwargs)
    for task in range(len(support_x)):
        single = inner_loop(model, params, support_x[task], support_y[task], **kwargs)
        for name in params:
            assert by_vmap[name].shape == (len(support_x), *params[name].shape)
            assert relative_error(by_vmap[name][task], single[name]) < TOL
            assert relative_error(by_loop[name][task], single[name]) < TOL
        expected = forward_with(model, single, query_x[task])
        for adapted in (by_vmap, by_loop):
            for strategy in ("vmap", "loop"):
                out = forward_batch(model, adapted, query_x, strategy=strategy)[task]
                assert relative_error(out, expected) < TOL


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("case", list(CASES))
def test_adaptation_never_mutates_the_module(case, strategy):
    make_model, make_batch, loss_fn = CASES[case]
    model, batch = make_model(), make_batch()
    before = {name: (t.clone(), t._version) for name, t in model.state_dict(keep_vars=True).items()}
    params = dict(model.named_parameters())
    meta_loss(model, params, batch, loss_fn, steps=2, lr=0.1, strategy=strategy).backward()
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for name, (value, version) in before.items():
        assert torch.equal(after[name], value) and after[name]._version == version, name
        assert after[name] is params.get(name, after[name])  # the very same Parameter objects
    assert all(p.grad is not None for p in model.parameters())  # only .grad was written, by backward()


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("case", list(CASES))
def test_name_filter_adapts_only_the_named_parameters(case, strategy):
    """ANIL: adapting ``head.*`` leaves the body's tensors the very same objects; the body still gets a gradient."""
    make_model, make_batch, loss_fn = CASES[case]
    model = make_model()
    support_x, support_y, query_x, query_y = make_batch()
    params = dict(model.named_parameters())
    head = [name for name in params if name.startswith("head.")]
    adapted = adapt_batch(
        model, params, support_x, support_y, loss_fn=loss_fn, steps=2, lr=0.1, names=head, strategy=strategy
    )
    for name in params:
        if name in head:
            assert adapted[name].shape == (len(support_x), *params[name].shape)
        else:
            assert adapted[name] is params[name], name
    single = inner_loop(model, params, support_x[0], support_y[0], loss_fn=loss_fn, steps=2, lr=0.1, names=head)
    assert all(single[name] is params[name] for name in params if name not in head)
    assert relative_error(single["head.weight"], adapted["head.weight"][0]) < TOL
    outputs = forward_batch(model, adapted, query_x, strategy=strategy)
    loss = torch.stack([loss_fn(o, y) for o, y in zip(outputs, query_y, strict=True)]).mean()
    body_grad = torch.autograd.grad(loss, next(iter(params.values())))[0]  # the first layer of the body
    assert body_grad.abs().max() > 0


@pytest.mark.parametrize("lr_kind", ["per_parameter", "per_step"])
@pytest.mark.parametrize(("first_order", "steps"), [(False, 2), (True, 1)], ids=["second_order", "first_order"])
def test_learned_learning_rates_receive_their_gradients(lr_kind, first_order, steps):
    """Meta-SGD / MAML++ rates get a nonzero gradient, equal to central differences of the meta-loss.

    First order is exact for the rates of a single step (the inner gradient does not depend on them).
    """
    model = tiny_mlp()
    batch = regression_batch(n_tasks=2)
    params = {name: p.detach() for name, p in model.named_parameters()}
    lr, learned = learning_rates(lr_kind, params, steps=steps)
    kwargs = dict(steps=steps, lr=lr, first_order=first_order)
    analytic = flat(torch.autograd.grad(meta_loss(model, params, batch, F.mse_loss, **kwargs), learned))
    assert analytic.abs().max() > 0  # (some per-weight rates get 0: weights into dead ReLUs have no gradient)

    rate = learned[0]  # the rates of body.0.weight, against finite differences
    eps, numeric = 1e-6, torch.zeros_like(rate)
    with torch.no_grad():
        for i in range(rate.numel()):
            rate.view(-1)[i] += eps
            up = meta_loss(model, params, batch, F.mse_loss, **kwargs)
            rate.view(-1)[i] -= 2 * eps
            down = meta_loss(model, params, batch, F.mse_loss, **kwargs)
            rate.view(-1)[i] += eps
            numeric.view(-1)[i] = (up - down) / (2 * eps)
    assert relative_error(analytic[: rate.numel()], numeric.reshape(-1)) < 1e-7


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("case", list(CASES))
def test_task_by_task_mean_gives_the_meta_loss_and_meta_gradient(case, first_order):
    """Differentiating task by task (one graph alive) equals one backward through the whole meta-batch."""
    make_model, make_batch, loss_fn = CASES[case]
    model = make_model()
    support_x, support_y, query_x, query_y = batch = make_batch()
    params = dict(model.named_parameters())
    lr, learned = learning_rates("per_step", params, steps=2)
    kwargs = dict(steps=2, lr=lr, first_order=first_order)
    wrt = list(params.values()) + learned
    expected = meta_loss(model, params, batch, loss_fn, strategy="loop", **kwargs)
    expected_grads = flat(torch.autograd.grad(expected, wrt))

    def task_losses():
        for task in range(len(support_x)):
            adapted = inner_loop(model, params, support_x[task], support_y[task], loss_fn=loss_fn, **kwargs)
            yield loss_fn(forward_with(model, adapted, query_x[task]), query_y[task])

    loss = mean_task_by_task(task_losses(), wrt)
    assert loss.shape == () and relative_error(loss.detach(), expected.detach()) < 1e-14
    assert relative_error(flat(torch.autograd.grad(loss, wrt)), expected_grads) < TOL
    with torch.no_grad():
        assert relative_error(mean_task_by_task(task_losses(), wrt), expected.detach()) < 1e-14
    with pytest.raises(ValueError, match="yielded no loss"):
        mean_task_by_task(iter([]), wrt)


def test_return_all_gives_the_parameters_after_every_step():
    """MAML++'s multi-step loss: entry k is what ``steps=k+1`` returns."""
    model = tiny_mlp()
    support_x, support_y, _, _ = regression_batch()
    params = dict(model.named_parameters())
    lrs = [0.1, 0.05, 0.02]
    for strategy in ("vmap", "loop"):
        trace = adapt_batch(
            model, params, support_x, support_y, loss_fn=F.mse_loss, steps=3, lr=lrs, return_all=True, strategy=strategy
        )
        assert len(trace) == 3
        for k in range(3):
            shorter = adapt_batch(
                model, params, support_x, support_y, loss_fn=F.mse_loss, steps=k + 1, lr=lrs[: k + 1], strategy=strategy
            )
            for name in params:
                assert relative_error(trace[k][name], shorter[name]) < TOL
    single = inner_loop(model, params, support_x[0], support_y[0], loss_fn=F.mse_loss, steps=3, lr=lrs, return_all=True)
    assert [relative_error(s["head.bias"], trace[k]["head.bias"][0]) < TOL for k, s in enumerate(single)] == [True] * 3


def test_zero_steps_return_the_parameters_unchanged():
    model = tiny_mlp()
    support_x, support_y, query_x, _ = regression_batch()
    params = dict(model.named_parameters())
    kwargs = dict(loss_fn=F.mse_loss, steps=0, lr=0.1)
    assert all(v is params[k] for k, v in inner_loop(model, params, support_x[0], support_y[0], **kwargs).items())
    adapted = adapt_batch(model, params, support_x, support_y, **kwargs)
    assert all(v is params[k] for k, v in adapted.items())
    assert inner_loop(model, params, support_x[0], support_y[0], return_all=True, **kwargs) == []
    assert relative_error(forward_batch(model, adapted, query_x), torch.stack([model(x) for x in query_x])) < TOL


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_under_no_grad_the_inner_loop_still_adapts_but_keeps_no_graph(strategy):
    model = tiny_mlp()
    support_x, support_y, _, _ = regression_batch()
    params = dict(model.named_parameters())
    kwargs = dict(loss_fn=F.mse_loss, steps=2, lr=0.1, strategy=strategy)
    expected = adapt_batch(model, params, support_x, support_y, **kwargs)
    with torch.no_grad():
        adapted = adapt_batch(model, params, support_x, support_y, **kwargs)
    for name in params:
        assert adapted[name].grad_fn is None and not adapted[name].requires_grad
        assert relative_error(adapted[name], expected[name]) < TOL


def test_inference_mode_is_refused_with_an_explanation():
    model = tiny_mlp()
    support_x, support_y, _, _ = regression_batch()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        inner_loop(
            model, dict(model.named_parameters()), support_x[0], support_y[0], loss_fn=F.mse_loss, steps=1, lr=0.1
        )


def test_sgd_step_updates_only_the_named_parameters():
    params = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)}
    grads = {"w": torch.tensor([1.0, -1.0]), "b": torch.tensor(1.0)}
    new = sgd_step(params, grads, {"w": torch.tensor([0.5, 2.0]), "b": 1.0}, names=["w"])
    assert torch.equal(new["w"], torch.tensor([0.5, 4.0])) and new["b"] is params["b"]
    assert torch.equal(sgd_step(params, grads, 0.5)["b"], torch.tensor(2.5))
    assert torch.equal(params["w"], torch.tensor([1.0, 2.0]))  # out of place


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(steps=-1), "steps must be a non-negative integer"),
        (dict(lr=[0.1]), "needs steps=2 entries; got 1"),
        (dict(lr={"head.weight": 0.1}), r"missing \['body.0.weight'"),
        (dict(lr="fast"), "lr must be a number"),
        (dict(names="head.weight"), "collection of parameter names"),
        (dict(names=["head.kernel"]), r"names \['head.kernel'\] are not in params"),
        (dict(strategy="pmap"), "strategy must be one of"),
    ],
)
def test_bad_arguments_raise_errors_that_name_them(kwargs, message):
    model = tiny_mlp()
    support_x, support_y, _, _ = regression_batch()
    arguments = {**dict(loss_fn=F.mse_loss, steps=2, lr=0.1), **kwargs}
    with pytest.raises(ValueError, match=message):
        adapt_batch(model, dict(model.named_parameters()), support_x, support_y, **arguments)


def test_mismatched_task_dimensions_are_refused():
    model = tiny_mlp()
    support_x, support_y, query_x, _ = regression_batch()
    params = dict(model.named_parameters())
    with pytest.raises(ValueError, match="same leading task dimension"):
        adapt_batch(model, params, support_x, support_y[:2], loss_fn=F.mse_loss, steps=1, lr=0.1)
    adapted = adapt_batch(model, params, support_x, support_y, loss_fn=F.mse_loss, steps=1, lr=0.1)
    with pytest.raises(ValueError, match="holds 3 tasks but query_x holds 2"):
        forward_batch(model, adapted, query_x[:2])


# --- learn2learn, the reference implementation -------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("case", list(CASES))
@needs_l2l
def test_meta_gradient_matches_learn2learn_maml(case, first_order, steps):
    """learn2learn's MAML (clone, adapt, query loss, backward per task) gives our meta-gradient."""
    make_model, make_batch, loss_fn = CASES[case]
    model = make_model()
    support_x, support_y, query_x, query_y = batch = make_batch()
    maml = l2l.algorithms.MAML(model, lr=0.1, first_order=first_order)
    for task in range(len(support_x)):
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(loss_fn(learner(support_x[task]), support_y[task]))
        (loss_fn(learner(query_x[task]), query_y[task]) / len(support_x)).backward()
    reference = flat([p.grad for p in model.parameters()])

    params = dict(model.named_parameters())
    for strategy in ("vmap", "loop"):
        ours = torch.autograd.grad(
            meta_loss(model, params, batch, loss_fn, steps=steps, lr=0.1, first_order=first_order, strategy=strategy),
            list(params.values()),
        )
        assert relative_error(flat(ours), reference) < 1e-9, strategy


def test_docstring_examples_run():
    assert doctest.testmod(functional_module).failed == 0


class _SharedAndTied(nn.Module):
    """One submodule under two names (as learn2learn's OmniglotCNN) and a weight tied across two layers."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(2, 2)
        self.alias = self.body
        self.encode, self.decode = nn.Linear(2, 2), nn.Linear(2, 2)
        self.decode.weight = self.encode.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(self.alias(x))) + self.body(x)


def test_forward_with_handles_a_submodule_under_two_names_and_tied_weights():
    model = _SharedAndTied()
    originals = {name: p for name, p in model.named_parameters()}
    assert sorted(originals) == ["body.bias", "body.weight", "decode.bias", "encode.bias", "encode.weight"]
    new = {name: torch.randn_like(p) for name, p in originals.items()}
    x = torch.randn(3, 2)
    out = forward_with(model, new, x)
    w, b = new["body.weight"], new["body.bias"]
    h = x @ w.T + b
    expected = (h @ new["encode.weight"].T + new["encode.bias"]) @ new["encode.weight"].T + new["decode.bias"] + h
    torch.testing.assert_close(out, expected)
    # the module is left as it was: its own parameters, still shared and tied
    assert all(p is originals[n] for n, p in model.named_parameters())
    assert model.alias is model.body and model.decode.weight is model.encode.weight
    assert isinstance(model.body.weight, nn.Parameter)
    # and gradients flow to the given tensors through both uses
    grads = torch.autograd.grad(forward_with(model, {n: t.requires_grad_() for n, t in new.items()}, x).sum(),
                                list(new.values()))  # fmt: skip
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------------------------------------------- mini-batches
def hand_written_mini_batch_sgd(model, params, x, y, loss_fn, *, steps, lr, batch_size):
    """Plain SGD where step k sees positions k*b .. k*b + b - 1 of the support set, modulo its size (a reference
    written without the package's inner loop: explicit index lists, torch.autograd.grad, first order)."""
    fast = {name: p.detach().clone() for name, p in params.items()}
    n = x.shape[0]
    for k in range(steps):
        index = [(k * batch_size + i) % n for i in range(batch_size)]
        current = {name: p.requires_grad_() for name, p in fast.items()}
        loss = loss_fn(torch.func.functional_call(model, current, (x[index],)), y[index])
        grads = torch.autograd.grad(loss, list(current.values()))
        fast = {name: (p - lr * g).detach() for (name, p), g in zip(current.items(), grads, strict=True)}
    return fast


@pytest.mark.parametrize(("batch_size", "steps"), [(2, 3), (3, 4), (7, 2)])  # 7 > 5 examples: wraps within a batch
def test_mini_batch_inner_loop_is_sgd_cycling_through_the_support_set(batch_size, steps):
    model = tiny_mlp()
    params = dict(model.named_parameters())
    support_x, support_y, _, _ = regression_batch(n_tasks=1, shots=5)
    adapted = inner_loop(model, params, support_x[0], support_y[0], loss_fn=F.mse_loss, steps=steps, lr=0.1,
                         first_order=True, batch_size=batch_size)  # fmt: skip
    expected = hand_written_mini_batch_sgd(model, params, support_x[0], support_y[0], F.mse_loss, steps=steps, lr=0.1,
                                           batch_size=batch_size)  # fmt: skip
    for name in params:
        torch.testing.assert_close(adapted[name], expected[name], rtol=TOL, atol=TOL)
    full = inner_loop(model, params, support_x[0], support_y[0], loss_fn=F.mse_loss, steps=steps, lr=0.1)
    assert not torch.allclose(adapted["head.weight"], full["head.weight"])  # mini-batches change the result


def test_a_batch_of_the_whole_support_set_is_the_full_batch_inner_loop_exactly():
    model = tiny_mlp()
    params = dict(model.named_parameters())
    support_x, support_y, _, _ = regression_batch(n_tasks=1, shots=5)
    args = (model, params, support_x[0], support_y[0])
    whole = inner_loop(*args, loss_fn=F.mse_loss, steps=3, lr=0.1, batch_size=5)
    full = inner_loop(*args, loss_fn=F.mse_loss, steps=3, lr=0.1)
    assert all(torch.equal(whole[name], full[name]) for name in params)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("case", ["mlp", "conv4"])
def test_mini_batch_vmap_and_loop_give_the_same_meta_gradients(case, first_order):
    make, batch_fn, loss_fn = CASES[case]
    model = make()
    batch = batch_fn()
    grads = {}
    for strategy in ("vmap", "loop"):
        params = dict(model.named_parameters())
        loss = meta_loss(model, params, batch, loss_fn, strategy=strategy, steps=3, lr=0.1, first_order=first_order,
                         batch_size=4)  # fmt: skip
        grads[strategy] = flat(torch.autograd.grad(loss, list(params.values())))
    assert relative_error(grads["vmap"], grads["loop"]) < TOL


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_batch_size_must_be_a_positive_integer(bad):
    model = tiny_mlp()
    x = torch.zeros(4, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"inner_loop: batch_size must be a positive integer or None .*got {bad!r}"):
        inner_loop(model, dict(model.named_parameters()), x, x, loss_fn=F.mse_loss, steps=1, lr=0.1, batch_size=bad)


# ----------------------------------------------------------------------------------------- a state carried in and out
@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_a_loop_split_in_two_with_the_state_carried_is_the_unsplit_loop(optimizer):
    from lightning_meta.inner_optim import SGD, Adam

    rule = Adam(betas=(0.0, 0.999)) if optimizer == "adam" else SGD(momentum=0.9)
    model = tiny_mlp()
    params = dict(model.named_parameters())
    support_x, support_y, _, _ = regression_batch(n_tasks=1, shots=5)
    args = (model, params, support_x[0], support_y[0])
    kwargs = {"loss_fn": F.mse_loss, "lr": 0.01, "optimizer": rule, "first_order": True}
    whole, whole_state = inner_loop(*args, steps=5, return_state=True, **kwargs)
    first, state = inner_loop(*args, steps=2, return_state=True, **kwargs)
    second, second_state = inner_loop(model, first, support_x[0], support_y[0], steps=3, state=state, first_step=2,
                                      return_state=True, **kwargs)  # fmt: skip
    for name in params:
        torch.testing.assert_close(second[name], whole[name], rtol=TOL, atol=TOL)
        for a, b in zip(second_state[name], whole_state[name], strict=True):
            torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)
    restarted = inner_loop(model, first, support_x[0], support_y[0], steps=3, **kwargs)  # a fresh state instead
    assert not torch.allclose(restarted["head.weight"], whole["head.weight"])


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_adapt_batch_starts_every_task_from_the_given_state_and_returns_each_tasks_state(strategy):
    from lightning_meta.inner_optim import Adam

    rule = Adam(betas=(0.0, 0.999))
    model = tiny_conv4()
    params = dict(model.named_parameters())
    support_x, support_y, _, _ = image_batch()
    warm = inner_loop(model, params, support_x[0], support_y[0], loss_fn=F.cross_entropy, steps=2, lr=0.01,
                      optimizer=rule, return_state=True)[1]  # fmt: skip
    adapted, states = adapt_batch(model, params, support_x, support_y, loss_fn=F.cross_entropy, steps=3, lr=0.01,
                                  optimizer=rule, strategy=strategy, state=warm, first_step=2,
                                  return_state=True)  # fmt: skip
    for t in range(support_x.shape[0]):
        alone, state = inner_loop(model, params, support_x[t], support_y[t], loss_fn=F.cross_entropy, steps=3,
                                  lr=0.01, optimizer=rule, state=warm, first_step=2, return_state=True)  # fmt: skip
        for name in params:
            torch.testing.assert_close(adapted[name][t], alone[name], rtol=1e-9, atol=1e-12)
            for a, b in zip(states[name], state[name], strict=True):
                torch.testing.assert_close(a[t], b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"first_step": -1}, "first_step must be a non-negative integer, got -1"),
        ({"state": {}}, r"state needs an entry for every adapted parameter; missing \['body.0.weight'"),
        ({"compiled": True, "first_step": 3}, "compiled=True needs first_step=0, got first_step=3"),
    ],
)
def test_a_bad_state_or_first_step_is_refused_naming_it(kwargs, message):
    model = tiny_mlp()
    x = torch.zeros(2, 4, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        adapt_batch(model, dict(model.named_parameters()), x, x, loss_fn=F.mse_loss, steps=1, lr=0.1, **kwargs)
