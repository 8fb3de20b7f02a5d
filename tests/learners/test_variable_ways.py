"""Gradient learners on episodes of varying ways: a head with the most ways' outputs, each episode using its first.

The reference is a model built by hand: the same body with a head of exactly the episode's ways (the first rows of
the wide head). On a ``ways``-way episode the wide model with :attr:`variable_ways` must give that model's meta-loss
and meta-gradient, and the rows no episode label reaches must get no gradient.
"""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch import nn

from lightning_meta import Episode, InnerLoop
from lightning_meta.learners import ANIL, IMAML, MAML, MetaSGD, Reptile
from lightning_meta.models import Conv4
from tests.helpers.multidomain import variable_datamodule

MAX_WAYS = 10


def episode(ways: int, *, shots: int = 2, queries: int = 3, dtype: torch.dtype = torch.float64) -> Episode:
    generator = torch.Generator().manual_seed(0)
    support_x = torch.randn(1, ways * shots, 3, 16, 16, generator=generator, dtype=dtype)
    query_x = torch.randn(1, ways * queries, 3, 16, 16, generator=generator, dtype=dtype)
    support_y = torch.arange(ways).repeat(shots).unsqueeze(0)
    query_y = torch.arange(ways).repeat(queries).unsqueeze(0)
    return Episode(support_x, support_y, query_x, query_y, ways=ways, batched=True)


def narrowed(model: Conv4, ways: int) -> Conv4:
    """The same network with a head of ``ways`` outputs: the first rows of ``model``'s head."""
    narrow = copy.deepcopy(model)
    narrow.head = nn.Linear(model.feature_dim, ways, dtype=model.head.weight.dtype)
    with torch.no_grad():
        narrow.head.weight.copy_(model.head.weight[:ways])
        narrow.head.bias.copy_(model.head.bias[:ways])
    return narrow


LEARNERS = {
    "maml": lambda m: MAML(m, inner_loop=InnerLoop(lr=0.3, steps=2, vectorize="loop")),
    "maml_vmap": lambda m: MAML(m, inner_loop=InnerLoop(lr=0.3, steps=2, vectorize="vmap")),
    "anil": lambda m: ANIL(m, inner_loop=InnerLoop(lr=0.3, steps=2, vectorize="loop")),
    "metasgd": lambda m: MetaSGD(m, inner_loop=InnerLoop(lr=0.3, steps=1, vectorize="loop")),
    "imaml": lambda m: IMAML(m, inner_loop=InnerLoop(lr=0.3, steps=3, vectorize="loop"), cg_steps=3),
}


@pytest.mark.parametrize("name", list(LEARNERS))
@pytest.mark.parametrize("ways", [3, 7])
def test_a_wide_head_on_a_narrower_episode_equals_a_head_of_exactly_its_ways(name, ways):
    torch.manual_seed(0)
    wide = Conv4(in_channels=3, hidden=4, out_features=MAX_WAYS, image_size=16).double()
    narrow = narrowed(wide, ways)
    wide_learner, narrow_learner = LEARNERS[name](wide), LEARNERS[name](narrow)
    wide_learner.variable_ways = True
    task = episode(ways)
    wide_loss, wide_predictions = wide_learner.meta_loss(task)
    narrow_loss, narrow_predictions = narrow_learner.meta_loss(task)
    assert wide_predictions.shape == narrow_predictions.shape == (1, ways * 3, ways)
    torch.testing.assert_close(wide_predictions, narrow_predictions, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(wide_loss, narrow_loss, rtol=1e-10, atol=1e-12)
    wide_loss.backward()
    narrow_loss.backward()
    for (n, p_wide), (_, p_narrow) in zip(wide.named_parameters(), narrow.named_parameters(), strict=True):
        g_wide = p_wide.grad if p_wide.grad is not None else torch.zeros_like(p_wide)
        g_narrow = p_narrow.grad if p_narrow.grad is not None else torch.zeros_like(p_narrow)
        if n.startswith("head."):
            torch.testing.assert_close(g_wide[:ways], g_narrow, rtol=1e-8, atol=1e-12, msg=n)
            assert torch.count_nonzero(g_wide[ways:]) == 0, f"{n}: the rows beyond {ways} ways got a gradient"
        else:
            torch.testing.assert_close(g_wide, g_narrow, rtol=1e-8, atol=1e-12, msg=n)


def test_reptile_moves_only_the_rows_of_the_episodes_ways():
    torch.manual_seed(0)
    wide = Conv4(in_channels=3, hidden=4, out_features=MAX_WAYS, image_size=16).double()
    narrow = narrowed(wide, 4)
    wide_learner = Reptile(wide, inner_loop=InnerLoop(lr=0.1, steps=2, vectorize="loop"))
    narrow_learner = Reptile(narrow, inner_loop=InnerLoop(lr=0.1, steps=2, vectorize="loop"))
    wide_learner.variable_ways = True
    wide_learner.meta_loss(episode(4))[0].backward()
    narrow_learner.meta_loss(episode(4))[0].backward()
    torch.testing.assert_close(wide.head.weight.grad[:4], narrow.head.weight.grad)
    assert torch.count_nonzero(wide.head.weight.grad[4:]) == 0


def test_without_varying_ways_a_head_wider_than_the_episode_is_still_refused():
    learner = MAML(
        Conv4(in_channels=3, hidden=4, out_features=MAX_WAYS, image_size=16).double(),
        inner_loop=InnerLoop(vectorize="loop"),
    )
    with pytest.raises(ValueError, match="5-way: a classifier needs exactly one logit per way"):
        learner.meta_loss(episode(5))


def test_with_varying_ways_a_head_narrower_than_the_episode_is_refused_naming_max_ways():
    learner = MAML(
        Conv4(in_channels=3, hidden=4, out_features=4, image_size=16).double(), inner_loop=InnerLoop(vectorize="loop")
    )
    learner.variable_ways = True
    with pytest.raises(ValueError, match=r"VariableEpisodes.max_ways \(at least 6\)"):
        learner.meta_loss(episode(6))


@pytest.mark.parametrize("name", ["maml", "anil", "metasgd", "imaml", "reptile"])
def test_every_gradient_learner_trains_and_validates_on_variable_multidomain_episodes(name, tmp_path):
    torch.manual_seed(0)
    model = Conv4(in_channels=3, hidden=4, out_features=MAX_WAYS, image_size=16)
    make = {**LEARNERS, "reptile": lambda m: Reptile(m, inner_loop=InnerLoop(lr=0.1, steps=2, vectorize="loop"))}[name]
    learner = make(model)
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    trainer = L.Trainer(
        accelerator="cpu", max_steps=4, limit_val_batches=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )  # fmt: skip
    data = variable_datamodule(train_episodes=4)
    trainer.fit(learner, data)
    assert learner.variable_ways is True
    ways_seen = {data.tasks("train").sample(torch.Generator().manual_seed(s), ways=5, shots=1, queries=1).ways
                 for s in range(20)}  # fmt: skip
    assert len(ways_seen) > 1  # the data really varies
    moved = [n for n, p in learner.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("model.body") or n.startswith("model.head") for n in moved)
    (metrics,) = trainer.validate(learner, data, verbose=False)
    assert 0.0 <= metrics["val/acc"] <= 1.0
    assert any(key.startswith("val/acc/") for key in metrics)  # accuracy per domain


def test_variable_ways_survives_a_checkpoint(tmp_path):
    learner = MAML(
        Conv4(in_channels=3, hidden=4, out_features=MAX_WAYS, image_size=16), inner_loop=InnerLoop(vectorize="loop")
    )
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(learner, variable_datamodule(train_episodes=1))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    loaded = MAML.load_from_checkpoint(
        path, model=Conv4(in_channels=3, hidden=4, out_features=MAX_WAYS, image_size=16), weights_only=False
    )
    assert loaded.variable_ways is True
    _, predictions = loaded.meta_loss(episode(3, dtype=torch.float32))  # a 3-way episode on the 10-output head
    assert predictions.shape[-1] == 3
