"""Inner optimizers: second-order meta-gradients against finite differences, vmap against loop, torch.optim parity,
SGD bit for bit the old inner step, and learners that take, save and reload an inner optimizer."""

from __future__ import annotations

import doctest
import gc
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_meta.inner_optim
from lightning_meta import Episode, InnerLoop, functional
from lightning_meta.data import EpisodicDataModule, Sinusoid
from lightning_meta.hparams import build_module
from lightning_meta.inner_optim import SGD, Adam, InnerOptimizer, Proximal
from lightning_meta.learners import ANIL, MAML, MetaSGD, Reptile
from lightning_meta.models import MLP
from tests.helpers.trainers import quiet_trainer

OPTIMIZERS: dict[str, Callable[[], InnerOptimizer]] = {
    "sgd": SGD,
    "momentum": lambda: SGD(momentum=0.9),
    "nesterov": lambda: SGD(momentum=0.5, nesterov=True),
    "adam": lambda: Adam(betas=(0.9, 0.99), eps=1e-3),
    "adam_beta1_0": lambda: Adam(betas=(0.0, 0.999), eps=1e-3),
    "proximal_adam": lambda: Proximal(Adam(eps=1e-3), lam=2.0),
}


def tasks(n_tasks: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_tasks, 12, 1, generator=g, dtype=torch.float64) * 6 - 3
    y = torch.sin(x + torch.rand(n_tasks, 1, 1, generator=g, dtype=torch.float64))
    return x[:, :6], y[:, :6], x[:, 6:], y[:, 6:]


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return MLP(hidden=(6,)).double()


def meta_loss(model, params, lr, optimizer, strategy="vmap", steps=3) -> torch.Tensor:
    sx, sy, qx, qy = tasks()
    adapted = functional.adapt_batch(
        model, params, sx, sy, loss_fn=F.mse_loss, steps=steps, lr=lr, optimizer=optimizer, strategy=strategy
    )
    return F.mse_loss(functional.forward_batch(model, adapted, qx), qy)


def learned_rates(model) -> dict[str, torch.Tensor]:
    return {n: torch.full_like(p, 0.05).requires_grad_() for n, p in model.named_parameters()}


def directional_check(loss_of: Callable[[list[torch.Tensor]], torch.Tensor], leaves: list[torch.Tensor]) -> None:
    """Gradient . d against the central difference (f(x + e d) - f(x - e d)) / 2e along three random directions."""
    grads = torch.autograd.grad(loss_of(leaves), leaves)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        ds = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in leaves]
        eps = 1e-6
        with torch.no_grad():
            plus = loss_of([t + eps * d for t, d in zip(leaves, ds, strict=True)])
            minus = loss_of([t - eps * d for t, d in zip(leaves, ds, strict=True)])
        numeric = (plus - minus) / (2 * eps)
        analytic = sum((gr * d).sum() for gr, d in zip(grads, ds, strict=True))
        torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_second_order_meta_gradient_through_each_optimizer_matches_finite_differences(name):
    model = small_model()
    names = [n for n, _ in model.named_parameters()]
    optimizer = OPTIMIZERS[name]()

    def loss_of(leaves):
        with torch.enable_grad():
            return meta_loss(model, dict(zip(names, leaves, strict=True)), 0.05, optimizer)

    directional_check(loss_of, [p.detach().clone().requires_grad_() for p in model.parameters()])


@pytest.mark.parametrize("per_step", [False, True], ids=["meta_sgd", "maml++_per_step"])
@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_meta_gradient_through_learned_rates_matches_finite_differences(name, per_step):
    model = small_model()
    names = [n for n, _ in model.named_parameters()]
    optimizer = OPTIMIZERS[name]()
    n = len(names)

    def loss_of(leaves):
        params = dict(zip(names, leaves[:n], strict=True))
        if per_step:  # MAML++: one scalar rate per layer and step
            lr = [{m: leaves[n + i][step] for i, m in enumerate(names)} for step in range(3)]
        else:  # Meta-SGD: one rate per weight
            lr = dict(zip(names, leaves[n:], strict=True))
        with torch.enable_grad():
            return meta_loss(model, params, lr, optimizer)

    rates = (
        [torch.tensor([0.05, 0.04, 0.03], dtype=torch.float64, requires_grad=True) for _ in names]
        if per_step
        else list(learned_rates(model).values())
    )
    directional_check(loss_of, [p.detach().clone().requires_grad_() for p in model.parameters()] + rates)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_vmap_and_loop_give_the_same_loss_and_meta_gradient(name):
    model = small_model()
    results = []
    for strategy in ("vmap", "loop"):
        params = dict(model.named_parameters())
        rates = learned_rates(model)
        loss = meta_loss(model, params, rates, OPTIMIZERS[name](), strategy=strategy)
        results.append((loss, torch.autograd.grad(loss, [*params.values(), *rates.values()])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-14)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _old_inner_loop(model, params, x, y, steps, lr):
    """The inner loop as functional._descend took it before inner optimizers: ``p.sub(g, alpha=lr)``."""
    fast = dict(params)
    for _ in range(steps):
        loss = F.mse_loss(functional.forward_with(model, fast, x), y)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
        fast = {n: p.sub(g, alpha=lr) for (n, p), g in zip(fast.items(), grads, strict=True)}
    return fast


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_sgd_is_bit_for_bit_the_previous_inner_step(strategy):
    model = MLP(hidden=(8,))
    params = dict(model.named_parameters())
    sx, sy, qx, qy = (t.float() for t in tasks())
    default = functional.adapt_batch(model, params, sx, sy, loss_fn=F.mse_loss, steps=3, lr=0.1, strategy=strategy)
    explicit = functional.adapt_batch(
        model, params, sx, sy, loss_fn=F.mse_loss, steps=3, lr=0.1, strategy=strategy, optimizer=SGD()
    )
    old = [_old_inner_loop(model, params, x, y, 3, 0.1) for x, y in zip(sx, sy, strict=True)]
    for name in params:
        assert torch.equal(default[name], explicit[name])
        assert torch.equal(explicit[name], torch.stack([task[name] for task in old]))


def test_adam_first_step_equals_torch_optim_adam():
    g = torch.Generator().manual_seed(0)
    p0, grad = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    grad[0] = 0.0  # a zero gradient: Adam leaves the weight where it is
    for betas in [(0.9, 0.999), (0.0, 0.999)]:
        reference = p0.clone().requires_grad_()
        torch_adam = torch.optim.Adam([reference], lr=0.01, betas=betas, eps=1e-8, foreach=False)
        ours = {"w": p0}
        state = Adam(betas=betas).init(ours)
        for step in range(3):
            reference.grad = grad * (step + 1)
            torch_adam.step()
            ours, state = Adam(betas=betas).update(ours, {"w": grad * (step + 1)}, state, lr=0.01, step=step)
            if step == 0:
                assert torch.equal(ours["w"], reference.detach())
            torch.testing.assert_close(ours["w"], reference.detach(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_sgd_follows_torch_optim_sgd(nesterov):
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(6, generator=g)
    grads = [torch.randn(6, generator=g) for _ in range(3)]
    reference = p0.clone().requires_grad_()
    torch_sgd = torch.optim.SGD([reference], lr=0.1, momentum=0.9, nesterov=nesterov, foreach=False)
    opt = SGD(momentum=0.9, nesterov=nesterov)
    ours = {"w": p0}
    state = opt.init(ours)
    for step, grad in enumerate(grads):
        reference.grad = grad
        torch_sgd.step()
        ours, state = opt.update(ours, {"w": grad}, state, lr=0.1, step=step)
        torch.testing.assert_close(ours["w"], reference.detach(), rtol=0, atol=1e-7)


def test_adam_meta_gradient_stays_finite_where_a_gradient_is_exactly_zero():
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    opt = Adam()
    params, state = {"w": w}, opt.init({"w": w})
    for step in range(2):
        grads = {"w": torch.autograd.grad((params["w"][0] ** 2), params["w"], create_graph=True)[0]}
        params, state = opt.update(params, grads, state, lr=0.1, step=step)
    (meta_grad,) = torch.autograd.grad(params["w"].sum(), w)
    assert torch.isfinite(meta_grad).all()
    assert meta_grad[1] == 1.0  # the second weight never moved


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SGD(momentum=1.0), "momentum must be a number in \\[0, 1\\), got 1.0"),
        (lambda: SGD(nesterov=True), "nesterov=True needs a momentum > 0"),
        (lambda: Adam(betas=(0.9,)), "betas must be two numbers"),
        (lambda: Adam(betas=(0.9, 1.5)), "betas\\[1\\] must be a number in \\[0, 1\\), got 1.5"),
        (lambda: Adam(eps=0.0), "eps must be a finite number > 0, got 0.0"),
        (lambda: Proximal(SGD(), lam=-1.0), "lam must be a finite number > 0, got -1.0"),
        (
            lambda: MAML(MLP(), inner_loop=InnerLoop(optimizer=torch.optim.SGD)),
            "InnerLoop: optimizer must be an InnerOptimizer",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_an_unknown_optimizer_is_refused_by_the_inner_loop():
    model = MLP()
    with pytest.raises(ValueError, match="optimizer must be an InnerOptimizer"):
        functional.inner_loop(model, dict(model.named_parameters()), torch.randn(4, 1), torch.randn(4, 1),
                              loss_fn=F.mse_loss, steps=1, lr=0.1, optimizer="adam")  # fmt: skip


def test_optimizers_record_their_config_and_are_rebuilt_from_it():
    opt = Proximal(Adam(betas=(0.0, 0.999), eps=1e-6), lam=0.5)
    config = opt.init_config
    assert config == {
        "class_path": "lightning_meta.inner_optim.Proximal",
        "init_args": {
            "optimizer": {
                "class_path": "lightning_meta.inner_optim.Adam",
                "init_args": {"betas": [0.0, 0.999], "eps": 1e-6},
            },
            "lam": 0.5,
        },
    }
    rebuilt = build_module(config)
    assert isinstance(rebuilt, Proximal) and rebuilt.optimizer.betas == (0.0, 0.999) and rebuilt.lam == 0.5


def test_doctests_of_inner_optim_run():
    failures, _ = doctest.testmod(lightning_meta.inner_optim)
    assert failures == 0


LEARNERS = {
    "maml_adam": lambda: MAML(
        MLP(hidden=(8,)), inner_loop=InnerLoop(lr=0.01, steps=2, vectorize="vmap", optimizer=Adam(betas=(0.0, 0.999)))
    ),  # fmt: skip
    "anil_momentum": lambda: ANIL(
        MLP(hidden=(8,)), inner_loop=InnerLoop(lr=0.01, vectorize="loop", optimizer=SGD(momentum=0.9))
    ),
    "metasgd_momentum": lambda: MetaSGD(
        MLP(hidden=(8,)), inner_loop=InnerLoop(lr=0.01, steps=2, vectorize="vmap", optimizer=SGD(momentum=0.5))
    ),  # fmt: skip
    "maml++_adam": lambda: MAML(
        MLP(hidden=(8,)),
        inner_loop=InnerLoop(steps=2, lr=0.01, vectorize="vmap", optimizer=Adam()),
        learn_inner_lr=True,
    ),  # fmt: skip
    "reptile_adam": lambda: Reptile(
        MLP(hidden=(8,)), inner_loop=InnerLoop(lr=0.001, steps=3, vectorize="vmap", optimizer=Adam(betas=(0.0, 0.999)))
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(LEARNERS))
def test_learner_with_an_inner_optimizer_fits_and_reloads_with_weights_only_loading(name, tmp_path):
    torch.manual_seed(0)
    learner = LEARNERS[name]()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    data = EpisodicDataModule(Sinusoid(), Sinusoid(), Sinusoid(), shots=5, queries=5, tasks_per_batch=4,
                              train_episodes=8, eval_episodes=4)  # fmt: skip
    quiet_trainer(max_epochs=1, callbacks=[checkpoint]).fit(learner, data)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["hyper_parameters"]["inner_loop"]
    assert saved["init_args"]["optimizer"] == learner.inner_loop.optimizer.init_config
    reloaded = type(learner).load_from_checkpoint(tmp_path / "last.ckpt")  # weights_only: the optimizer is data
    assert type(reloaded.inner_loop.optimizer) is type(learner.inner_loop.optimizer)
    assert reloaded.inner_loop.optimizer.init_config == learner.inner_loop.optimizer.init_config
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 10, 1, generator=g) * 10 - 5
    batch = Episode(x[:, :5], torch.sin(x[:, :5]), x[:, 5:], torch.sin(x[:, 5:]), batched=True)
    learner.eval()
    reloaded.eval()
    torch.testing.assert_close(reloaded(batch), learner(batch), rtol=0, atol=0)


def test_the_inner_optimizer_changes_the_adaptation_and_learned_rates_still_learn():
    torch.manual_seed(0)
    model = MLP(hidden=(8,))
    x = torch.randn(2, 10, 1)
    episode = Episode(x, torch.sin(x), x, torch.sin(x), batched=True)
    plain = MetaSGD(model, inner_loop=InnerLoop(lr=0.05, vectorize="vmap"))
    adam = MetaSGD(model, inner_loop=InnerLoop(lr=0.05, vectorize="vmap", optimizer=Adam()))
    loss_plain, _ = plain.meta_loss(episode)
    loss_adam, _ = adam.meta_loss(episode)
    assert not torch.allclose(loss_plain, loss_adam)
    loss_adam.backward()
    assert all(rate.grad is not None and rate.grad.abs().sum() > 0 for rate in adam.meta_sgd_lrs.values())


@pytest.fixture
def reset_dynamo():
    try:
        yield
    finally:
        torch._dynamo.reset()
        gc.collect()


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_compiled_adaptation_with_adam_equals_eager(strategy, reset_dynamo):
    model = MLP(hidden=(8,))
    sx, sy, qx, qy = (t.float() for t in tasks())
    results = []
    for compiled in (False, True):
        params = dict(model.named_parameters())
        adam = Adam(betas=(0.0, 0.999))
        adapted = functional.adapt_batch(model, params, sx, sy, loss_fn=F.mse_loss, steps=2, lr=0.01, optimizer=adam,
                                         strategy=strategy, compiled=compiled)  # fmt: skip
        loss = F.mse_loss(functional.forward_batch(model, adapted, qx), qy)
        results.append((loss, torch.autograd.grad(loss, list(params.values()))))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
