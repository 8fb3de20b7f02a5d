"""The ``lightning-meta`` command: LightningCLI over every learner and datamodule."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

import lightning_meta.learners  # noqa: F401  (registers the learners as subclasses of MetaLearner)
from lightning_meta.data import EpisodicDataModule
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
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--torch_num_threads", type=int | None, default=None, help="torch.set_num_threads")

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        threads = config.get("torch_num_threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"--torch_num_threads must be a positive integer, got {threads}.")
            torch.set_num_threads(threads)

    def after_fit(self) -> None:
        """Print the query error before and after adaptation (learners that can report it)."""
        summarize = getattr(self.model, "summarize_adaptation", None)
        if summarize is not None and self.trainer.is_global_zero:
            # as many validation meta-batches as the Trainer's validation used (fast_dev_run, limit_val_batches)
            used = [n for n in self.trainer.num_val_batches if n != float("inf")]
            summarize(self.datamodule, max_batches=int(sum(used)) if used else None)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``lightning-meta fit|validate|test|predict``.

    ``lightning-meta fit`` with no other argument meta-trains the embedded default (MAML on sinusoids) and prints
    the query error before and after adaptation.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv == ["fit"]:
        argv += ["--config", str(DEFAULT_CONFIG)]
        if args is None:  # LightningCLI warns when given args besides a command line: make them the command line
            sys.argv = sys.argv[:1] + argv
    MetaCLI(
        MetaLearner,
        EpisodicDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if argv == sys.argv[1:] else argv,
        save_config_kwargs={"overwrite": True},
    )
