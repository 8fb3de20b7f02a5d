"""``compile_inner_loop=True``: the inner loop through ``torch.compile`` gives eager's loss and meta-gradient."""

from __future__ import annotations

import gc

import pytest
import torch

from lightning_meta import Episode, InnerLoop
from lightning_meta.learners import MAML
from lightning_meta.models import MLP

pytestmark = pytest.mark.integration  # torch.compile: 16-80 s per shape on a CPU


@pytest.fixture(autouse=True)
def reset_compiled_functions():
    """Dynamo's caches keep the tensors the compiled functions were traced with: drop them for the other tests.

    In the teardown, so that it runs even when a test fails (a failed compile test once left 36 traced tensors
    alive and failed six unrelated tests after it).
    """
    try:
        yield
    finally:
        torch._dynamo.reset()
        gc.collect()


def _meta_loss_and_gradient(strategy: str, first_order: bool, compile_inner_loop: bool) -> tuple[float, torch.Tensor]:
    torch.manual_seed(0)
    loop = InnerLoop(lr=0.05, steps=2, first_order=first_order, vectorize=strategy, compiled=compile_inner_loop)
    learner = MAML(MLP(hidden=(16, 16)), inner_loop=loop)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 10, 1, generator=g) * 10 - 5
    episode = Episode(x[:, :5], torch.sin(x[:, :5]), x[:, 5:], torch.sin(x[:, 5:]), batched=True)
    loss, _ = learner.meta_loss(episode)
    loss.backward()
    return float(loss), torch.cat([p.grad.flatten() for p in learner.parameters()])


@pytest.mark.parametrize(("strategy", "first_order"), [("vmap", False), ("loop", True)])
def test_compiled_inner_loop_gives_the_eager_loss_and_meta_gradient(strategy, first_order):
    """Second order works compiled: the inner gradients are torch.func.grad, traced into the compiled graph."""
    eager_loss, eager_gradient = _meta_loss_and_gradient(strategy, first_order, compile_inner_loop=False)
    compiled_loss, compiled_gradient = _meta_loss_and_gradient(strategy, first_order, compile_inner_loop=True)
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-6)
    torch.testing.assert_close(compiled_gradient, eager_gradient, rtol=1e-5, atol=1e-7)
    if not first_order:  # the second-order terms are there: first order gives another meta-gradient
        _, first_order_gradient = _meta_loss_and_gradient(strategy, True, compile_inner_loop=False)
        assert not torch.allclose(first_order_gradient, compiled_gradient, rtol=1e-3, atol=1e-5)


def test_compiled_must_be_a_bool():
    with pytest.raises(ValueError, match=r"InnerLoop: compiled must be True or False, got 'yes'"):
        MAML(MLP(), inner_loop=InnerLoop(compiled="yes"))  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_compiling_several_models_in_one_process_with_garbage_collection_between(strategy):
    """A notebook's second run, a hyperparameter search: models built, compiled, discarded, collected, built again.

    Dynamo once traced into the module-level alias cache (a WeakKeyDictionary) and guarded on a key's position in
    it; after a collected model had left it, building that guard raised ``IndexError`` (issue 11). Each model here
    must also give eager's loss, so a stale compiled graph of an earlier model would be caught.
    """
    for seed in range(4):
        torch.manual_seed(seed)
        # models of two layouts, one of them holding a submodule under two names (the alias path)
        hidden = (8, 8) if seed % 2 else (12,)
        loop = InnerLoop(lr=0.05, steps=1, first_order=True, vectorize=strategy, compiled=True)
        learner = MAML(MLP(hidden=hidden), inner_loop=loop)
        if seed == 3:
            learner.model.alias = learner.model.head  # the same module under a second name
        x = torch.rand(2, 6, 1, generator=torch.Generator().manual_seed(seed)) * 10 - 5
        episode = Episode(x[:, :3], torch.sin(x[:, :3]), x[:, 3:], torch.sin(x[:, 3:]), batched=True)
        compiled_loss, _ = learner.meta_loss(episode)
        learner.inner_loop.compiled = False
        eager_loss, _ = learner.meta_loss(episode)
        assert float(compiled_loss) == pytest.approx(float(eager_loss), rel=1e-6)
        del learner, episode, compiled_loss, eager_loss
        gc.collect()  # the earlier model leaves the weak alias cache
