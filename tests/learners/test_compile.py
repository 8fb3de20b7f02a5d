"""``compile_inner_loop=True``: the inner loop through ``torch.compile`` gives eager's loss and meta-gradient."""

from __future__ import annotations

import pytest
import torch

from lightning_meta import Episode
from lightning_meta.learners import MAML
from lightning_meta.models import MLP


@pytest.fixture(autouse=True)
def reset_compiled_functions():
    """Dynamo's caches keep the tensors the compiled functions were traced with: drop them for the other tests."""
    yield
    torch._dynamo.reset()


def _meta_loss_and_gradient(strategy: str, first_order: bool, compile_inner_loop: bool) -> tuple[float, torch.Tensor]:
    torch.manual_seed(0)
    learner = MAML(MLP(hidden=(16, 16)), inner_lr=0.05, inner_steps=2, first_order=first_order, strategy=strategy,
                   compile_inner_loop=compile_inner_loop)  # fmt: skip
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


def test_compile_inner_loop_must_be_a_bool():
    with pytest.raises(ValueError, match=r"compile_inner_loop must be True or False, got 'yes'"):
        MAML(MLP(), compile_inner_loop="yes")  # type: ignore[arg-type]
