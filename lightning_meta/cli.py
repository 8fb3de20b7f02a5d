"""The ``lightning-meta`` command: LightningCLI over every learner and datamodule."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from rich.console import Console
from rich.table import Table
from typing_extensions import override

import lightning_meta.learners  # noqa: F401  (registers the learners as subclasses of MetaLearner)
import lightning_meta.rl  # noqa: F401  (registers MAMLPolicyGradient and TaskDataModule: --model/--data by name)
from lightning_meta.data import EpisodicDataModule
from lightning_meta.distributed import end_process_group
from lightning_meta.learners.base import MetaLearner

#: The job ``lightning-meta fit`` runs when given no other argument.
DEFAULT_CONFIG = Path(__file__).with_name("configs") / "sinusoid_maml.yaml"


class MetaCLI(LightningCLI):
    """``LightningCLI`` with learners and datamodules selectable by class name (``--model MAML``).

    One option beyond Lightning's: ``--torch_num_threads N`` sets ``torch.set_num_threads(N)`` before anything is
    built. Small models (the sinusoid MLP) run fastest on one thread on a CPU: their cost is per-operation
    overhead, which more threads only add to, and on a busy machine OpenMP's waiting threads can slow each step by
    an order of magnitude (measured here: 4.3 ms per MAML meta-step with one thread, 128 ms with two while other
    jobs ran).

    With ``--ckpt_path``, LightningCLI puts the checkpoint's saved hyper-parameters over the configuration, the
    command line included, so ``lightning-meta test --ckpt_path ... --model.init_args.transductive true`` would be
    ignored without a word. Here a ``--model.*`` option given on the command line wins over the checkpoint, and a
    line on stderr says which it changed; the config file's values still give way to the checkpoint's.
    """

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: object) -> None:
        super().parse_arguments(parser, args)  # type: ignore[arg-type]
        argv = sys.argv[1:] if args is None else args
        # what the config files and the command line say, before a checkpoint's hyper-parameters go on top
        self.parsed_config = self.config.clone()
        self.command_line_model_keys = [
            token[2:].split("=", 1)[0]
            for token in (argv if isinstance(argv, (list, tuple)) else [])
            if isinstance(token, str) and token.startswith("--model.")
        ]

    def keep_command_line_model_options(self, subcommand: str) -> None:
        """Put back the ``--model.*`` options of the command line that a checkpoint's hyper-parameters replaced."""
        for key in self.command_line_model_keys:
            full = f"{subcommand}.{key}"
            if key.count(".") == 1:  # --model.scale is short for --model.init_args.scale
                full = f"{subcommand}.model.init_args.{key.split('.', 1)[1]}"
            given, now = self.parsed_config.get(full), self.config.get(full)
            if given is not None and given != now:
                self.config[full] = given
                print(
                    f"lightning-meta {subcommand}: --{key} {given} replaces the checkpoint's {now} "
                    "(the checkpoint's hyper-parameters apply to every other model option).",
                    file=sys.stderr,
                )

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--torch_num_threads", type=int | None, default=None, help="torch.set_num_threads")
        parser.add_argument(
            "--untrained",
            type=bool,
            default=False,
            help="validate/test/predict: allow running without --ckpt_path, on the weights the config builds",
        )

    @override
    def before_instantiate_classes(self) -> None:
        if self.subcommand:
            self.keep_command_line_model_options(self.subcommand)
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        threads = config.get("torch_num_threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"--torch_num_threads must be a positive integer, got {threads}.")
            torch.set_num_threads(threads)
        if self.subcommand in ("validate", "test", "predict") and config.get("ckpt_path") is None:
            if not config.get("untrained"):
                raise ValueError(
                    f"lightning-meta {self.subcommand}: no --ckpt_path, so this would {self.subcommand} the untrained "
                    "weights the config builds. Pass the checkpoint of a fit, e.g. --ckpt_path "
                    "lightning_logs/version_0/checkpoints/last.ckpt (or --untrained true to run on untrained weights)."
                )

    def after_fit(self) -> None:
        """Print the last validation figures, and the query error before and after adaptation where available."""
        if not self.trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            table = Table(title=f"Validation at step {self.trainer.global_step}")
            table.add_column("metric")
            table.add_column("value", justify="right")
            for name, value in sorted(metrics.items()):
                table.add_row(name, f"{value:.4f}")
            Console().print(table)
        summarize = getattr(self.model, "summarize_adaptation", None)
        if summarize is not None and self.trainer.is_global_zero:
            # as many validation meta-batches as the Trainer's validation used (fast_dev_run, limit_val_batches)
            used = [n for n in self.trainer.num_val_batches if n != float("inf")]
            summarize(self.datamodule, max_batches=int(sum(used)) if used else None)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``lightning-meta fit|validate|test|predict``.

    ``lightning-meta fit`` without a config, model or data meta-trains the embedded default (MAML on sinusoids) with
    any overrides given, and prints the query error before and after adaptation. From the console, an error that
    this package raises for a bad setting or a missing file is printed in one line, without the traceback
    (``LIGHTNING_META_TRACEBACK=1`` shows it).
    """
    argv = list(sys.argv[1:] if args is None else args)
    if uses_embedded_default(argv):
        argv[1:1] = ["--config", str(DEFAULT_CONFIG)]
        if args is None:  # LightningCLI warns when given args besides a command line: make them the command line
            sys.argv = sys.argv[:1] + argv
    try:
        run(None if argv == sys.argv[1:] else argv)
    except Exception as error:
        cause = _our_error(error)
        if args is not None or cause is None or os.environ.get("LIGHTNING_META_TRACEBACK"):
            raise  # called from Python (tests, notebooks): the exception itself
        print(f"lightning-meta: {type(cause).__name__}: {cause}", file=sys.stderr)
        print("(set LIGHTNING_META_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        raise SystemExit(2) from None
    end_process_group()  # a DDP run's gloo threads can abort the process at exit otherwise


def run(args: Sequence[str] | None) -> MetaCLI:
    """Run ``lightning-meta`` with these arguments (``None``: the command line) and return the CLI object.

    The CLI object holds the ``trainer`` and the ``model`` after the run, which is what tests and notebooks inspect;
    :func:`main` is the console entry point (which must return nothing).
    """
    return MetaCLI(
        MetaLearner,
        EpisodicDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        save_config_kwargs={"overwrite": True},
    )


def uses_embedded_default(argv: Sequence[str]) -> bool:
    """Whether ``lightning-meta fit ...`` names no config, model or data: then it runs the embedded default.

    So ``lightning-meta fit --trainer.max_epochs 1`` and ``lightning-meta fit --print_config`` start from the
    embedded sinusoid job, as the bare ``lightning-meta fit`` does.

    Example:
        >>> uses_embedded_default(["fit"]), uses_embedded_default(["fit", "--trainer.max_epochs", "1"])
        (True, True)
        >>> uses_embedded_default(["fit", "--data.init_args.train_episodes", "50"])  # overrides the default's data
        True
        >>> uses_embedded_default(["fit", "--config", "my.yaml"]), uses_embedded_default(["test", "--ckpt_path", "x"])
        (False, False)
    """
    if not argv or argv[0] != "fit":
        return False
    named = ("--config", "-c", "--model", "--data", "--model.class_path", "--data.class_path")
    return not any(arg == name or arg.startswith(name + "=") for arg in argv[1:] for name in named)


#: Errors that this package raises on purpose, with a message meant for the user: printed without a traceback.
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError)


def _our_error(error: BaseException) -> BaseException | None:
    """The innermost error of the chain raised by this package's own code for a bad setting or missing file."""
    package = str(Path(__file__).resolve().parent)
    found = None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = traceback.extract_tb(current.__traceback__)
        if isinstance(current, _USER_ERRORS) and frames and frames[-1].filename.startswith(package):
            found = current
        current = current.__cause__ or current.__context__
    return found
