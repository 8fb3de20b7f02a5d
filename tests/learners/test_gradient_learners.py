"""MAML, FOMAML, ANIL, Meta-SGD, MAML++ and Reptile as LightningModules, against independent references."""

from __future__ import annotations

import contextlib
import copy
import gc
import math
from dataclasses import replace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import TensorDataset

from lightning_meta import Episode, InnerLoop
from lightning_meta.data import EpisodicDataModule, Sinusoid
from lightning_meta.learners import ANIL, MAML, MetaSGD, Reptile
from lightning_meta.learners.auto_vectorize import AutoVectorize
from lightning_meta.models import MLP, Conv4
from tests.helpers.learn2learn import l2l, needs_l2l
from tests.helpers.trainers import quiet_trainer


def sinusoid_batch(n_tasks: int = 3, shots: int = 5, seed: int = 0, dtype=torch.float64) -> Episode:
    g = torch.Generator().manual_seed(seed)
    tasks = [Sinusoid().sample(g, ways=1, shots=shots, queries=7) for _ in range(n_tasks)]
    return Episode.stack(tasks).to(dtype)


def image_batch(n_tasks: int = 2, ways: int = 3, shots: int = 2, queries: int = 3, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    x = lambda n: torch.randn(n_tasks, n, 1, 16, 16, generator=g, dtype=torch.float64)  # noqa: E731
    y = lambda k: torch.arange(ways).repeat_interleave(k).expand(n_tasks, -1)  # noqa: E731
    return Episode(x(ways * shots), y(shots), x(ways * queries), y(queries), ways=ways, batched=True)


def small_conv(ways: int = 3) -> Conv4:
    return Conv4(in_channels=1, hidden=4, out_features=ways, image_size=16).double()


def grads_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_close_dicts(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=rtol * 1e-3, msg=name)


def sgd_adapted_copy(net: torch.nn.Module, task: Episode, *, lr: float, steps: int) -> torch.nn.Module:
    """The independent reference for an inner loop: a copy of the network trained with torch.optim.SGD."""
    phi = copy.deepcopy(net)
    sgd = torch.optim.SGD(phi.parameters(), lr=lr)
    for _ in range(steps):
        sgd.zero_grad()
        F.mse_loss(phi(task.support_x), task.support_y).backward()
        sgd.step()
    sgd.zero_grad()
    return phi


# ----------------------------------------------------------------------------------------- learn2learn reference
@needs_l2l
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("kind", ["sinusoid_mlp", "conv4_classification"])
def test_maml_meta_gradient_matches_learn2learn(first_order, strategy, kind):
    torch.manual_seed(0)
    if kind == "sinusoid_mlp":
        net, batch, loss_fn = MLP(hidden=(8, 8)).double(), sinusoid_batch(), F.mse_loss
    else:
        net, batch, loss_fn = small_conv(), image_batch(), F.cross_entropy
    ours = MAML(copy.deepcopy(net), inner_loop=InnerLoop(lr=0.1, steps=2, first_order=first_order, vectorize=strategy))
    loss, _ = ours.meta_loss(batch)
    loss.backward()

    reference = l2l.algorithms.MAML(copy.deepcopy(net), lr=0.1, first_order=first_order)
    total = 0.0
    for task in batch:
        learner = reference.clone()
        for _ in range(2):
            learner.adapt(loss_fn(learner(task.support_x), task.support_y))
        total = total + loss_fn(learner(task.query_x), task.query_y)
    (total / batch.n_tasks).backward()
    torch.testing.assert_close(loss, total / batch.n_tasks, rtol=1e-12, atol=0)
    assert_close_dicts({f"model.{k}": v for k, v in grads_of(reference.module).items()}, grads_of(ours), rtol=1e-9)


# ----------------------------------------------------------------------------------------- other references
def test_maml_second_order_meta_gradient_matches_finite_differences():
    torch.manual_seed(1)
    learner = MAML(MLP(hidden=(6,)).double(), inner_loop=InnerLoop(lr=0.05, steps=3, vectorize="vmap"))
    batch = sinusoid_batch(n_tasks=2)
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    eps = 1e-6
    for name, p in learner.model.named_parameters():
        for i in range(min(p.numel(), 4)):
            flat = p.data.view(-1)
            old = flat[i].item()
            flat[i] = old + eps
            plus = learner.meta_loss(batch)[0].item()
            flat[i] = old - eps
            minus = learner.meta_loss(batch)[0].item()
            flat[i] = old
            assert p.grad.view(-1)[i].item() == pytest.approx((plus - minus) / (2 * eps), rel=1e-6, abs=1e-9), name


def test_first_order_maml_gradient_is_the_query_gradient_at_the_adapted_weights():
    torch.manual_seed(2)
    net = MLP(hidden=(8,)).double()
    learner = MAML(copy.deepcopy(net), inner_loop=InnerLoop(lr=0.1, steps=2, first_order=True, vectorize="loop"))
    batch = sinusoid_batch()
    learner.meta_loss(batch)[0].backward()
    expected = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for task in batch:  # hand-written: plain SGD on a copy, then the query gradient there
        phi = sgd_adapted_copy(net, task, lr=0.1, steps=2)
        F.mse_loss(phi(task.query_x), task.query_y).backward()
        for n, p in phi.named_parameters():
            expected[n] += p.grad / batch.n_tasks
    assert_close_dicts({f"model.{k}": v for k, v in expected.items()}, grads_of(learner), rtol=1e-10)


def test_reptile_gradient_is_theta_minus_the_mean_adapted_weights():
    torch.manual_seed(3)
    net = MLP(hidden=(8,)).double()
    learner = Reptile(copy.deepcopy(net), inner_loop=InnerLoop(lr=0.02, steps=4, vectorize="vmap"))
    batch = sinusoid_batch(n_tasks=4)
    learner.meta_loss(batch)[0].backward()
    phis = [dict(sgd_adapted_copy(net, task, lr=0.02, steps=4).named_parameters()) for task in batch]
    expected = {f"model.{n}": p.detach() - sum(ph[n].detach() for ph in phis) / 4 for n, p in net.named_parameters()}
    assert_close_dicts(expected, grads_of(learner), rtol=1e-10)


def test_reptile_outer_sgd_step_moves_theta_towards_phi():
    torch.manual_seed(3)
    learner = Reptile(MLP(hidden=(8,)).double(), inner_loop=InnerLoop(lr=0.02, steps=2, vectorize="loop"), lr=0.5)
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    batch = sinusoid_batch(n_tasks=1)
    phi = learner.adapt_params(batch, steps=2, first_order=True)
    optimizer = learner.configure_optimizers()
    learner.meta_loss(batch)[0].backward()
    optimizer.step()
    for n, p in learner.model.named_parameters():
        expected = before[f"model.{n}"] + 0.5 * (phi[n][0].detach() - before[f"model.{n}"])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)


def reptile_classification_episode(n_tasks: int = 2, ways: int = 3, queries: int = 4) -> Episode:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(ways).repeat(n_tasks, 1)
    return Episode(
        torch.randn(n_tasks, ways, 1, 28, 28, generator=g, dtype=torch.float64),
        labels,
        torch.randn(n_tasks, ways * queries, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(ways).repeat_interleave(queries).repeat(n_tasks, 1),
        ways=ways,
        batched=True,
    )


def test_reptile_non_transductive_evaluation_classifies_each_query_alone_beside_the_support_set():
    # The reference is supervised_reptile's _test_predictions: for each query, train a copy of the network on the
    # support set, then run it on support + that one query in one batch and keep the last output.
    torch.manual_seed(0)
    net = Conv4(in_channels=1, hidden=8, out_features=3, image_size=28).double()
    inner = InnerLoop(lr=0.05, steps=2, vectorize="loop")
    alone = Reptile(copy.deepcopy(net), inner_loop=inner, transductive=False).eval()
    together = Reptile(copy.deepcopy(net), inner_loop=inner).eval()
    batch = reptile_classification_episode()
    with torch.enable_grad():
        loss, predictions = alone.meta_loss(batch)
        transductive = together.meta_loss(batch)[1]
    for t, task in enumerate(batch):
        phi = copy.deepcopy(net)
        sgd = torch.optim.SGD(phi.parameters(), lr=0.05)
        for _ in range(2):
            sgd.zero_grad()
            F.cross_entropy(phi(task.support_x), task.support_y).backward()
            sgd.step()
        with torch.no_grad():
            expected = torch.stack([phi(torch.cat([task.support_x, q[None]]))[-1] for q in task.query_x])
            torch.testing.assert_close(predictions[t], expected, rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(transductive[t], phi(task.query_x), rtol=1e-9, atol=1e-10)
    assert not torch.allclose(predictions, transductive)  # batch statistics: the protocols differ
    expected_loss = F.cross_entropy(predictions.reshape(-1, 3), batch.query_y.reshape(-1))
    torch.testing.assert_close(loss, expected_loss)
    # a query's prediction does not depend on the other queries
    changed = batch.query_x.clone()
    changed[:, 1:] = torch.randn_like(changed[:, 1:])
    with torch.enable_grad():
        again = alone.meta_loss(replace(batch, query_x=changed))[1]
    torch.testing.assert_close(again[:, 0], predictions[:, 0])
    # evaluation keeps no graph (adaptation needs gradients, so they are on; the predictions need none)
    assert not predictions.requires_grad and not transductive.requires_grad


def test_reptile_refuses_a_transductive_setting_that_is_not_a_bool():
    with pytest.raises(ValueError, match="transductive must be True or False, got 'no'"):
        Reptile(MLP(), transductive="no")  # type: ignore[arg-type]


def test_anil_adapts_the_head_only():
    learner = ANIL(small_conv(), inner_loop=InnerLoop(lr=0.1, steps=2, vectorize="vmap"))
    batch = image_batch()
    adapted = learner.adapt_params(batch, steps=2, first_order=False)
    params = dict(learner.model.named_parameters())
    for name, tensor in adapted.items():
        if name.startswith("head."):
            assert tensor.shape == (batch.n_tasks, *params[name].shape)
            assert not torch.allclose(tensor[0], params[name])
        else:
            assert tensor is params[name]
    learner.meta_loss(batch)[0].backward()
    assert all(p.grad is not None for p in learner.model.parameters())  # the body is meta-learned


class HeadThenScale(nn.Module):
    """A user's network whose output is not its head's output: ANIL cannot reuse the body's features."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Conv4(in_channels=1, hidden=4, image_size=16)
        self.head = nn.Linear(self.body.feature_dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * self.head(self.body(x))


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("kind", ["conv4", "head_then_scale"])
def test_anil_meta_gradient_matches_a_hand_written_second_order_loop_over_the_whole_network(strategy, kind):
    # The reference runs the whole network at every inner step (torch.func.functional_call with the head's fast
    # weights), differentiating through the inner gradients; ANIL reuses the body's features where it can.
    torch.manual_seed(0)
    net = small_conv() if kind == "conv4" else HeadThenScale().double()
    learner = ANIL(copy.deepcopy(net), inner_loop=InnerLoop(lr=0.3, steps=3, first_order=False, vectorize=strategy))
    batch = image_batch()
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    assert learner.caches_features is (kind == "conv4")
    heads = ["head.weight", "head.bias"]
    losses = []
    for task in batch:
        fast = [dict(net.named_parameters())[n] for n in heads]
        for _ in range(3):
            support_loss = F.cross_entropy(
                torch.func.functional_call(net, dict(zip(heads, fast, strict=True)), (task.support_x,)), task.support_y
            )
            grads = torch.autograd.grad(support_loss, fast, create_graph=True)
            fast = [w - 0.3 * g for w, g in zip(fast, grads, strict=True)]
        outputs = torch.func.functional_call(net, dict(zip(heads, fast, strict=True)), (task.query_x,))
        losses.append(F.cross_entropy(outputs, task.query_y))
    expected_loss = torch.stack(losses).mean()
    expected_loss.backward()
    torch.testing.assert_close(loss.detach(), expected_loss.detach(), rtol=1e-10, atol=1e-12)
    expected = {f"model.{n}": p.grad for n, p in net.named_parameters()}
    assert_close_dicts(expected, grads_of(learner), rtol=1e-8)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_anil_runs_the_body_once_per_input_when_predicting_after_every_inner_step(strategy, monkeypatch):
    # MAML++'s multi-step loss and the adaptation curves predict the query set after each inner step. The body is
    # fixed inside a task, so ANIL runs it once on the support set and once on the query set, not once per step;
    # the loss, its meta-gradient and the curve's predictions equal those of recomputing the features each time.
    torch.manual_seed(0)
    learner = ANIL(small_conv(), inner_loop=InnerLoop(lr=0.3, steps=3, vectorize=strategy), multi_step_loss=True)
    batch = image_batch()
    learner.meta_loss(batch)  # the first batch checks the outputs and decides on feature reuse
    calls = []
    learner.model.register_forward_hook(lambda *args: calls.append(1))
    per_input = 1 if strategy == "vmap" else batch.n_tasks  # vmap runs the body once for every task

    def run():
        learner.zero_grad()
        loss, _ = learner.meta_loss(batch)
        loss.backward()
        learner.eval()
        curve = {k: p.detach() for k, p in learner.predictions_after(batch, [0, 1, 2, 3]).items()}
        learner.train()
        return loss.detach(), grads_of(learner), curve

    calls.clear()
    loss, grads, curve = run()
    assert len(calls) == 2 * per_input + 2 * per_input  # meta-loss: support, query; curve: support, query
    monkeypatch.setattr(learner, "reusing_features", contextlib.nullcontext)
    calls.clear()
    expected_loss, expected_grads, expected_curve = run()
    assert len(calls) == (1 + 3) * per_input + (1 + 4) * per_input  # the query set once per step
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    assert_close_dicts(expected_grads, grads, rtol=1e-10)
    assert_close_dicts(expected_curve, curve, rtol=1e-12)


def test_anil_refuses_a_missing_head():
    with pytest.raises(ValueError, match=r"head='classifier' names no parameters.*'body', 'head'"):
        ANIL(MLP(), head="classifier")


def test_meta_sgd_learning_rates_receive_gradients_and_drive_the_update():
    torch.manual_seed(4)
    learner = MetaSGD(MLP(hidden=(8,)).double(), inner_loop=InnerLoop(lr=0.05, vectorize="loop"))
    batch = sinusoid_batch()
    learner.meta_loss(batch)[0].backward()
    for key, rate in learner.meta_sgd_lrs.items():
        assert rate.grad is not None and rate.grad.abs().sum() > 0, key
    # an update with rates zeroed for one parameter leaves that parameter unadapted
    with torch.no_grad():
        learner.meta_sgd_lrs["head__bias"].zero_()
    adapted = learner.adapt_params(batch, steps=1, first_order=True)
    torch.testing.assert_close(adapted["head.bias"][0], learner.model.head.bias)


def test_vmap_and_loop_learners_give_the_same_meta_gradients():
    torch.manual_seed(5)
    results = {}
    for strategy in ("vmap", "loop"):
        learner = MAML(small_conv(), inner_loop=InnerLoop(lr=0.1, steps=2, vectorize=strategy), learn_inner_lr=True)
        learner.load_state_dict(results["vmap"][1]) if results else None
        loss, _ = learner.meta_loss(image_batch())
        loss.backward()
        results[strategy] = (grads_of(learner), copy.deepcopy(learner.state_dict()))
    assert_close_dicts(results["vmap"][0], results["loop"][0], rtol=1e-10)


# ----------------------------------------------------------------------------------------- MAML++
def reference_msl_weights(n: int, epochs: int, epoch: int) -> np.ndarray:
    """Transcribed from HowToTrainYourMAMLPytorch, few_shot_learning_system.get_per_step_loss_importance_vector."""
    loss_weights = np.ones(shape=(n,)) * (1.0 / n)
    decay_rate = 1.0 / n / epochs
    min_value_for_non_final_losses = 0.03 / n
    for i in range(len(loss_weights) - 1):
        loss_weights[i] = np.maximum(loss_weights[i] - (epoch * decay_rate), min_value_for_non_final_losses)
    loss_weights[-1] = np.minimum(
        loss_weights[-1] + (epoch * (n - 1) * decay_rate), 1.0 - ((n - 1) * min_value_for_non_final_losses)
    )
    return loss_weights


@pytest.mark.parametrize("epoch", [0, 1, 4, 9, 10, 30])
def test_maml_plus_plus_multi_step_loss_weights_follow_the_paper(epoch, monkeypatch):
    learner = MAML(MLP(), inner_loop=InnerLoop(steps=5), multi_step_loss=True, multi_step_loss_epochs=10)
    monkeypatch.setattr(type(learner), "current_epoch", property(lambda self: epoch))
    learner._trainer = object()  # only current_epoch is read
    weights = learner.multi_step_loss_weights().numpy()
    expected = reference_msl_weights(5, 10, epoch) if epoch < 10 else np.eye(5)[-1]
    np.testing.assert_allclose(weights, expected, rtol=1e-6)


def test_maml_plus_plus_multi_step_loss_is_the_weighted_sum_of_each_steps_query_loss():
    torch.manual_seed(6)
    learner = MAML(
        MLP(hidden=(8,)).double(), inner_loop=InnerLoop(lr=0.05, steps=3, vectorize="loop"), multi_step_loss=True
    )
    batch = sinusoid_batch()
    loss, _ = learner.meta_loss(batch)
    weights = learner.multi_step_loss_weights()
    expected = sum(
        w * F.mse_loss(learner.predict(batch.query_x, learner.adapt_params(batch, steps=k, first_order=False)),
                       batch.query_y)
        for w, k in zip(weights, (1, 2, 3), strict=True)
    )  # fmt: skip
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


def test_maml_plus_plus_per_layer_per_step_rates_are_learned():
    torch.manual_seed(7)
    learner = MAML(
        MLP(hidden=(8,)).double(), inner_loop=InnerLoop(lr=0.05, steps=2, vectorize="vmap"), learn_inner_lr=True
    )
    assert {k: tuple(v.shape) for k, v in learner.inner_lrs.items()} == {
        "body__0__weight": (2,), "body__0__bias": (2,), "head__weight": (2,), "head__bias": (2,)
    }  # fmt: skip
    learner.meta_loss(sinusoid_batch())[0].backward()
    assert all(rate.grad is not None and (rate.grad != 0).all() for rate in learner.inner_lrs.values())
    # evaluation with more steps than training reuses the last step's rates
    rates = learner.inner_lr_for(4)
    assert [r["head.bias"] for r in rates][2:] == [learner.inner_lrs["head__bias"][1]] * 2


# ----------------------------------------------------------------------------------------- Lightning behaviour
def sinusoid_datamodule(**kwargs) -> EpisodicDataModule:
    defaults = dict(shots=5, queries=5, tasks_per_batch=4, train_episodes=16, eval_episodes=8)
    return EpisodicDataModule(Sinusoid(), Sinusoid(), Sinusoid(), **{**defaults, **kwargs})


LEARNERS = {
    "maml": lambda: MAML(MLP(hidden=(8,)), inner_loop=InnerLoop(lr=0.01, steps=2, vectorize="vmap")),
    "fomaml": lambda: MAML(MLP(hidden=(8,)), inner_loop=InnerLoop(lr=0.01, first_order=True, vectorize="loop")),
    "maml++": lambda: MAML(
        MLP(hidden=(8,)), inner_loop=InnerLoop(steps=2, vectorize="vmap"), multi_step_loss=True, learn_inner_lr=True
    ),
    "anil": lambda: ANIL(MLP(hidden=(8,)), inner_loop=InnerLoop(lr=0.01, vectorize="vmap")),
    "metasgd": lambda: MetaSGD(MLP(hidden=(8,)), inner_loop=InnerLoop(lr=0.01, vectorize="loop")),
    "reptile": lambda: Reptile(MLP(hidden=(8,)), inner_loop=InnerLoop(lr=0.01, steps=2, vectorize="vmap")),
}


def tensors_in_a_graph() -> list[torch.Tensor]:
    """Live tensors that belong to an autograd graph (they keep that graph, and its saved tensors, alive)."""
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.grad_fn is not None]


class GraphWatch(L.Callback):
    """Records whether the inner loop built graphs during evaluation and how many graph tensors outlive each batch."""

    def __init__(self) -> None:
        self.built = []
        self.alive_after_batch = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.alive_after_batch.append(len(tensors_in_a_graph()))

    on_test_batch_end = on_validation_batch_end


@pytest.mark.parametrize("name", list(LEARNERS))
def test_default_trainer_validates_and_tests_with_gradients_and_keeps_no_graph(name):
    learner = LEARNERS[name]()
    watch = GraphWatch()
    trainer = quiet_trainer(callbacks=[watch])  # default settings: evaluation under torch.inference_mode
    assert trainer.validate_loop.inference_mode
    (val,) = trainer.validate(learner, sinusoid_datamodule(), verbose=False)
    (test,) = trainer.test(learner, sinusoid_datamodule(), verbose=False)
    assert np.isfinite(val["val/mse"]) and np.isfinite(test["test/mse"])
    assert len(watch.alive_after_batch) == 4 and set(watch.alive_after_batch) == {0}  # no graph outlives a batch
    assert all(p.grad is None for p in learner.parameters())
    # and the adapted weights did come from gradient steps: evaluation error differs from the unadapted model's
    dm = sinusoid_datamodule()
    dm.setup("test")
    unadapted = learner.adaptation_curve(dm.test_dataloader(), steps=[0])[0]
    assert test["test/mse"] != pytest.approx(unadapted, rel=1e-3)


@pytest.mark.parametrize("name", list(LEARNERS))
def test_learner_fits_and_reloads_from_checkpoint_with_identical_predictions(name, tmp_path):
    torch.manual_seed(0)
    learner = LEARNERS[name]()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = quiet_trainer(max_epochs=2, callbacks=[checkpoint])
    trainer.fit(learner, sinusoid_datamodule())
    assert np.isfinite(float(trainer.callback_metrics["train/loss"]))
    reloaded = type(learner).load_from_checkpoint(tmp_path / "last.ckpt")
    batch = sinusoid_batch(dtype=torch.float32)
    learner.eval()
    reloaded.eval()
    torch.testing.assert_close(reloaded(batch), learner(batch), rtol=0, atol=0)
    assert reloaded.hparams.keys() == learner.hparams.keys()


def test_meta_training_lowers_the_query_error_after_adaptation():
    torch.manual_seed(0)
    learner = MAML(MLP(), inner_loop=InnerLoop(lr=0.01, steps=1, eval_steps=5, vectorize="vmap"), lr=1e-2)
    dm = sinusoid_datamodule(shots=10, queries=10, tasks_per_batch=10, train_episodes=1000, eval_episodes=50)
    dm.setup("fit")
    before = learner.adaptation_curve(dm.val_dataloader(), steps=[5])[5]
    quiet_trainer(max_epochs=1, enable_checkpointing=False).fit(learner, dm)
    after = learner.adaptation_curve(dm.val_dataloader(), steps=[0, 5])
    assert after[5] < 0.7 * before  # observed 3.86 -> 1.95 (ratio 0.51) after 100 meta-steps
    assert after[5] < after[0]  # adaptation helps


def test_auto_strategy_times_both_paths_then_keeps_the_faster_and_checkpoints_it(tmp_path, caplog):
    learner = MAML(MLP(hidden=(8,)), inner_loop=InnerLoop(vectorize="auto"))
    used = []

    class Spy(L.Callback):
        def on_before_backward(self, trainer, pl_module, loss) -> None:
            used.append(pl_module.current_vectorize())

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    quiet_trainer(max_epochs=2, callbacks=[checkpoint, Spy()], num_sanity_val_steps=0).fit(
        learner, sinusoid_datamodule(train_episodes=24, eval_episodes=4)
    )
    assert used[:4] == ["vmap", "loop", "vmap", "loop"]
    assert learner.chosen_vectorize in ("vmap", "loop")
    assert set(used[4:]) == {learner.chosen_vectorize}
    reloaded = MAML.load_from_checkpoint(tmp_path / "last.ckpt")
    assert reloaded.chosen_vectorize == learner.chosen_vectorize


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "lr must be a positive finite number, got -1.0"),
        ({"multi_step_loss_epochs": 0}, "multi_step_loss_epochs must be at least 1, got 0"),
        ({"inner_loop": {"lr": 0.1}}, "inner_loop must be a lightning_meta.InnerLoop .* got dict"),
    ],
)
def test_maml_refuses_bad_settings_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MAML(MLP(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "InnerLoop: lr must be a positive finite number, got 0.0"),
        ({"lr": math.inf}, "InnerLoop: lr must be a positive finite number, got inf"),
        ({"steps": 0}, "InnerLoop: steps must be a positive integer, got 0"),
        ({"eval_steps": -1}, "InnerLoop: eval_steps must be a positive integer, got -1"),
        ({"vectorize": "jit"}, r"InnerLoop: vectorize must be one of \('auto', 'vmap', 'loop'\), got 'jit'"),
        ({"precision": "half"}, r"InnerLoop: precision must be one of \('float32', 'autocast'\), got 'half'"),
        ({"first_order": 1}, "InnerLoop: first_order must be True or False, got 1"),
        ({"optimizer": torch.optim.SGD}, "InnerLoop: optimizer must be an InnerOptimizer .* got type"),
    ],
)
def test_inner_loop_refuses_bad_settings_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InnerLoop(**kwargs)


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
def test_training_gives_identical_weights_whatever_num_workers_is(strategy):
    weights = []
    for num_workers in (0, 2):
        torch.manual_seed(0)
        learner = MAML(MLP(hidden=(8,)), inner_loop=InnerLoop(lr=0.01, steps=2, vectorize=strategy))
        dm = sinusoid_datamodule(num_workers=num_workers, train_episodes=24)
        quiet_trainer(max_epochs=2, enable_checkpointing=False, num_sanity_val_steps=0).fit(learner, dm)
        weights.append({n: p.detach().clone() for n, p in learner.named_parameters()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])


def test_auto_strategy_goes_straight_to_the_loop_for_convolutions_on_a_cpu():
    learner = MAML(small_conv(ways=3).float(), inner_loop=InnerLoop(lr=0.1, vectorize="auto"))
    used = []

    class Spy(L.Callback):
        def on_before_backward(self, trainer, pl_module, loss) -> None:
            used.append(pl_module.current_vectorize())

    images = TensorDataset(torch.randn(60, 1, 16, 16), torch.arange(6).repeat_interleave(10))
    dm = EpisodicDataModule(images, ways=3, shots=1, queries=2, tasks_per_batch=2, train_episodes=6)
    quiet_trainer(max_epochs=1, enable_checkpointing=False, callbacks=[Spy()]).fit(learner, dm)
    assert used == ["loop"] * 3 and learner.chosen_vectorize == "loop"


def test_auto_strategy_goes_straight_to_the_loop_for_native_batch_norm(caplog):
    """PyTorch's BatchNorm gives wrong second-order gradients under vmap (or refuses it with running statistics)."""
    model = nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.ReLU(), nn.Linear(8, 1))
    learner = MAML(model, inner_loop=InnerLoop(lr=0.01, vectorize="auto"))
    AutoVectorize().on_train_batch_start(None, learner, None, 0)  # type: ignore[arg-type]
    assert learner.chosen_vectorize == "loop" and learner.current_vectorize() == "loop"
