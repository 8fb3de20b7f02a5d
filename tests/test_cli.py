"""The ``lightning-meta`` command."""

import pytest
import torch

from lightning_meta.cli import DEFAULT_CONFIG, main, run


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """The default config sets torch's thread count for the process: give it back to the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_fit_runs_the_embedded_default_and_prints_the_error_before_and_after_adaptation(capsys, tmp_path):
    main(["fit", "--config", str(DEFAULT_CONFIG), "--trainer.max_epochs=1", "--data.init_args.train_episodes=100",
          "--data.init_args.eval_episodes=25", f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    out = capsys.readouterr().out
    assert "0 (before adaptation)" in out and "query MSE" in out
    assert "Adaptation summary: MAML on 25 validation tasks (" in out  # said before the work starts
    adaptation = out[out.index("inner steps") :]  # the validation table comes first
    rows = [line for line in adaptation.splitlines() if line.strip().startswith("│")]
    values = [float(row.split("│")[2]) for row in rows]
    assert len(values) == 3 and all(v > 0 for v in values)


def test_default_config_is_maml_on_sinusoids(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(DEFAULT_CONFIG), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "lightning_meta.learners.MAML" in printed and "lightning_meta.data.Sinusoid" in printed


def test_torch_num_threads_must_be_positive():
    with pytest.raises(ValueError, match="--torch_num_threads must be a positive integer, got 0"):
        main(["fit", "--config", str(DEFAULT_CONFIG), "--torch_num_threads=0"])


@pytest.mark.parametrize(
    ("learner", "own_argument"),
    [("MAML", "multi_step_loss"), ("ANIL", "head"), ("MetaSGD", "inner_loop"), ("Reptile", "inner_loop"),
     ("ProtoNet", "distance"), ("MatchingNet", "full_context_embeddings"), ("R2D2", "learn_lambda"),
     ("SNAIL", "shots")],
)  # fmt: skip
def test_every_learner_is_selectable_by_class_name_with_its_arguments(capsys, learner, own_argument):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model", learner, "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert f"class_path: lightning_meta.{learner}" in printed, printed
    assert f"    {own_argument}:" in printed, printed


def test_validate_and_test_load_the_checkpoint_of_a_fit(capsys, tmp_path):
    short = ["--config", str(DEFAULT_CONFIG), "--data.init_args.train_episodes=50", "--data.init_args.eval_episodes=25",
             f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    main(["fit", *short, "--trainer.max_epochs=1", "--trainer.enable_checkpointing=true"])
    (checkpoint,) = tmp_path.glob("**/*.ckpt")
    capsys.readouterr()
    main(["validate", *short, f"--ckpt_path={checkpoint}"])
    validated = capsys.readouterr().out
    main(["test", *short, "--data.init_args.test.class_path=lightning_meta.data.Sinusoid", f"--ckpt_path={checkpoint}"])
    tested = capsys.readouterr().out
    assert "val/mse" in validated and "test/mse" in tested, (validated, tested)


def test_fit_with_only_overrides_runs_the_embedded_default_and_prints_validation(capsys, tmp_path):
    main(["fit", "--trainer.max_epochs=1", "--data.init_args.train_episodes=50", "--data.init_args.eval_episodes=10",
          f"--trainer.default_root_dir={tmp_path}"])  # fmt: skip
    out = capsys.readouterr().out
    assert "Validation at step 2" in out and "val/mse" in out and "query MSE" in out


def test_print_config_without_a_config_prints_the_embedded_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "lightning_meta.learners.MAML" in printed and "lightning_meta.data.Sinusoid" in printed


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_evaluating_without_a_checkpoint_is_refused(subcommand):
    with pytest.raises(ValueError, match=rf"lightning-meta {subcommand}: no --ckpt_path.*--untrained true"):
        main([subcommand, "--config", str(DEFAULT_CONFIG)])


def test_a_missing_dataset_fails_in_a_few_lines_naming_the_file_and_the_download_option(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "missing.yaml"
    config.write_text(
        "model:\n  class_path: lightning_meta.learners.ProtoNet\n  init_args:\n    backbone:\n"
        "      class_path: lightning_meta.models.Conv4\n"
        "data:\n  class_path: lightning_meta.data.EpisodicDataModule\n  init_args:\n    train:\n"
        "      class_path: lightning_meta.data.Omniglot\n"
        f"      init_args: {{root: {tmp_path / 'nowhere'}, split: train}}\n"
    )
    command = [sys.executable, "-c", "import sys; from lightning_meta.cli import main; sys.exit(main())", "fit",
               "--config", str(config)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("lightning-meta")]
    assert len(lines) == 1 and "images_background.zip" in lines[0] and "download: true" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_option_on_the_command_line_wins_over_the_checkpoints_hyperparameters(capsys, tmp_path):
    # LightningCLI puts a checkpoint's hyper-parameters over the whole configuration; an explicit --model.* option
    # must not be dropped without a word, while the config file's values still give way to the checkpoint's.
    short = ["--config", str(DEFAULT_CONFIG), "--data.init_args.train_episodes=50", "--data.init_args.eval_episodes=25",
             f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]  # fmt: skip
    run(["fit", *short, "--trainer.max_epochs=1", "--trainer.enable_checkpointing=true", "--model.init_args.lr=0.002"])
    (checkpoint,) = tmp_path.glob("**/*.ckpt")
    capsys.readouterr()
    evaluate = [
        "test",
        *short,
        "--data.init_args.test.class_path=lightning_meta.data.Sinusoid",
        f"--ckpt_path={checkpoint}",
    ]
    assert run(evaluate).model.lr == 0.002  # the checkpoint's, over the config file's 0.001
    assert "replaces" not in capsys.readouterr().err
    assert run([*evaluate, "--model.init_args.lr=0.005"]).model.lr == 0.005
    assert "--model.init_args.lr 0.005 replaces the checkpoint's 0.002" in capsys.readouterr().err
    assert run([*evaluate, "--model.lr", "0.003"]).model.lr == 0.003
    assert "--model.lr 0.003 replaces the checkpoint's 0.002" in capsys.readouterr().err
