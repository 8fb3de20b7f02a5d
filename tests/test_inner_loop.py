"""InnerLoop: one inner-loop configuration for every gradient learner, saved as data and read by the CLI."""

from __future__ import annotations

import pytest
import torch

from lightning_meta import ANIL, IMAML, MAML, Episode, InnerLoop, MetaSGD, Reptile
from lightning_meta.cli import DEFAULT_CONFIG, run
from lightning_meta.inner_optim import SGD, Adam
from lightning_meta.models import MLP
from tests.helpers.trainers import quiet_trainer

LEARNERS = [MAML, ANIL, MetaSGD, Reptile, IMAML]


@pytest.mark.parametrize("cls", LEARNERS)
def test_every_gradient_learner_takes_the_inner_loop_as_one_argument_and_no_inner_keyword(cls):
    import inspect

    parameters = inspect.signature(cls.__init__).parameters
    assert "inner_loop" in parameters
    old = {"inner_lr", "inner_steps", "eval_inner_steps", "strategy", "inner_precision", "compile_inner_loop"}
    assert not old & set(parameters), f"{cls.__name__} re-declares {old & set(parameters)}"
    loop = InnerLoop(lr=0.2, steps=3, eval_steps=4, optimizer=SGD(momentum=0.5), vectorize="loop")
    learner = cls(MLP(hidden=(4,)), inner_loop=loop)
    assert learner.inner_loop is loop
    assert learner.hparams["inner_loop"] == loop.init_config  # saved as plain data, not a pickled module


def test_defaults_are_each_learners_own():
    assert (MAML(MLP()).inner_loop.steps, Reptile(MLP()).inner_loop.steps, IMAML(MLP()).inner_loop.steps) == (1, 5, 5)
    assert MAML(MLP()).inner_loop.evaluation_steps == 1
    assert InnerLoop(steps=2, eval_steps=7).evaluation_steps == 7


def test_the_inner_loop_settings_are_what_adaptation_uses():
    """Steps and rate: one SGD step at lr 0.5 on a linear model equals the hand-written update."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    learner = MAML(model, inner_loop=InnerLoop(lr=0.5, steps=1, vectorize="loop"))
    x = torch.randn(1, 6, 1)
    y = 3 * x
    adapted = learner.adapt_params(Episode(x, y, x, y, batched=True), steps=learner.inner_loop.steps, first_order=True)
    w, b = model.weight.detach(), model.bias.detach()
    residual = (x[0] @ w.T + b) - y[0]
    grad_w = 2 * (residual * x[0]).mean()
    grad_b = 2 * residual.mean()
    torch.testing.assert_close(adapted["weight"][0], w - 0.5 * grad_w.view(1, 1))
    torch.testing.assert_close(adapted["bias"][0], b - 0.5 * grad_b.view(1))


def test_a_checkpoint_reloads_the_inner_loop_with_weights_only_loading(tmp_path):
    from lightning_meta.data import EpisodicDataModule, Sinusoid

    loop = InnerLoop(lr=0.05, steps=2, eval_steps=3, optimizer=Adam(betas=(0.0, 0.99)), vectorize="vmap")
    learner = MAML(MLP(hidden=(8,)), inner_loop=loop)
    data = EpisodicDataModule(Sinusoid(), shots=5, queries=5, tasks_per_batch=2, train_episodes=2)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(learner, data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    reloaded = MAML.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert reloaded.inner_loop.init_config == loop.init_config
    assert isinstance(reloaded.inner_loop.optimizer, Adam) and reloaded.inner_loop.optimizer.betas == (0.0, 0.99)


def test_a_checkpoint_written_with_the_former_keywords_loads_with_a_deprecation_warning(tmp_path):
    """Checkpoints of the release before InnerLoop saved inner_lr, inner_steps, ...: they are translated, not lost."""
    from lightning_meta.data import EpisodicDataModule, Sinusoid

    learner = MAML(MLP(hidden=(8,)), inner_loop=InnerLoop(vectorize="loop"))
    data = EpisodicDataModule(Sinusoid(), shots=5, queries=5, tasks_per_batch=2, train_episodes=2)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(learner, data)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    del hparams["inner_loop"]
    hparams.update(inner_lr=0.3, inner_steps=2, eval_inner_steps=4, first_order=True, strategy="loop")
    checkpoint["chosen_strategy"] = checkpoint.pop("chosen_vectorize")
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.warns(DeprecationWarning, match=r"before the inner-loop settings became one InnerLoop"):
        old = MAML.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True)
    assert (old.inner_loop.lr, old.inner_loop.steps, old.inner_loop.eval_steps) == (0.3, 2, 4)
    assert old.inner_loop.first_order is True and old.inner_loop.vectorize == "loop"
    for name, value in learner.state_dict().items():
        torch.testing.assert_close(old.state_dict()[name], value)


def test_the_cli_reads_the_inner_loop_as_a_nested_block_and_overrides_one_setting(tmp_path):
    cli = run(
        ["fit", "--config", str(DEFAULT_CONFIG), "--model.init_args.inner_loop.init_args.steps=2",
         "--model.init_args.inner_loop.init_args.vectorize=loop", "--trainer.max_steps=1",
         "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path}"]
    )  # fmt: skip
    loop = cli.model.inner_loop
    assert (loop.lr, loop.steps, loop.eval_steps, loop.vectorize) == (0.01, 2, 10, "loop")  # the config's lr and eval


def test_a_learner_refuses_anything_but_an_inner_loop():
    with pytest.raises(ValueError, match=r"MAML: inner_loop must be a lightning_meta.InnerLoop .* got dict"):
        MAML(MLP(), inner_loop={"lr": 0.1})  # type: ignore[arg-type]


def test_lightning_meta_test_runs_on_an_upgraded_pre_inner_loop_checkpoint(tmp_path):
    """LightningCLI reads a checkpoint's hyperparameters into its config: an old one needs the upgrade tool."""
    from lightning_meta.upgrade import main as upgrade

    common = ["--config", str(DEFAULT_CONFIG), "--data.init_args.train_episodes=50",
              "--data.init_args.eval_episodes=10", f"--trainer.default_root_dir={tmp_path}",
              "--trainer.logger=false"]  # fmt: skip
    fit = run(["fit", *common, "--trainer.max_steps=1", "--trainer.enable_checkpointing=false"])
    fit.trainer.save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    hparams.update(inner_lr=0.02, inner_steps=1, eval_inner_steps=3, strategy="vmap")
    del hparams["inner_loop"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    sinusoid_test = "--data.init_args.test.class_path=lightning_meta.data.Sinusoid"
    with pytest.raises(Exception, match="inner_lr"):  # LightningCLI passes the old keywords to MAML
        run(["test", *common, f"--ckpt_path={tmp_path / 'old.ckpt'}", sinusoid_test])
    upgrade([str(tmp_path / "old.ckpt"), str(tmp_path / "upgraded.ckpt")])
    tested = run(["test", *common, f"--ckpt_path={tmp_path / 'upgraded.ckpt'}", sinusoid_test])
    loop = tested.model.inner_loop
    assert (loop.lr, loop.eval_steps, loop.vectorize) == (0.02, 3, "vmap")  # the checkpoint's, not the config's
    assert "test/mse" in tested.trainer.callback_metrics


def test_training_and_evaluation_adapt_with_their_own_mini_batch_sizes():
    """batch_size in training, eval_batch_size (default: batch_size) at evaluation, as the functional inner loop."""
    from lightning_meta.functional import adapt_batch

    torch.manual_seed(0)
    model = MLP(hidden=(8,))
    loop = InnerLoop(lr=0.1, steps=3, eval_steps=4, batch_size=3, eval_batch_size=2, vectorize="loop")
    learner = Reptile(model, inner_loop=loop)
    x = torch.randn(2, 6, 1)
    episode = Episode(x, torch.sin(x), x, torch.sin(x), batched=True)
    params = dict(model.named_parameters())
    for training, steps, batch_size in ((True, 3, 3), (False, 4, 2)):
        learner.train(training)
        adapted = learner.adapt_params(episode, steps=steps, first_order=True)
        expected = adapt_batch(model, params, x, torch.sin(x), loss_fn=torch.nn.functional.mse_loss, steps=steps,
                               lr=0.1, first_order=True, strategy="loop", batch_size=batch_size)  # fmt: skip
        for name in params:
            torch.testing.assert_close(adapted[name], expected[name], rtol=0, atol=0)
    assert InnerLoop(batch_size=5).evaluation_batch_size == 5 and InnerLoop().evaluation_batch_size is None
    assert "batch_size=3, eval_batch_size=2" in repr(loop)
    assert loop.init_config["init_args"]["batch_size"] == 3


@pytest.mark.parametrize("name", ["batch_size", "eval_batch_size"])
def test_mini_batch_sizes_must_be_positive_integers(name):
    with pytest.raises(ValueError, match=rf"InnerLoop: {name} must be a positive integer, got 0"):
        InnerLoop(**{name: 0})


def test_imaml_refuses_training_mini_batches():
    with pytest.raises(ValueError, match=r"IMAML: inner_loop\.batch_size must be None .* got batch_size=4"):
        IMAML(MLP(), inner_loop=InnerLoop(batch_size=4))
    assert IMAML(MLP(), inner_loop=InnerLoop(eval_batch_size=4)).inner_loop.evaluation_batch_size == 4
