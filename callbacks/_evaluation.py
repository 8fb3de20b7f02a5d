"""What the evaluating callbacks share: fixed episodes, an evaluation that disturbs nothing, and figure output.

An evaluation inside ``Trainer.fit`` must leave training exactly as it would have been without it: it reads its
episodes from a loader of its own (never the training loader), puts every module in evaluation mode and back,
computes without autograd (gradient learners re-enable it for their inner loop, as in validation), and restores
the state of every random generator it could touch (torch on the CPU and the model's accelerator, NumPy, Python).
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from lightning_meta.data import EpisodicDataModule
from lightning_meta.data.sampler import EpisodeDataset, EpisodeSampler, keep_episode
from lightning_meta.episode import Episode
from lightning_meta.learners.base import MetaLearner

#: The pip extra that installs the plotting dependency.
PLOTS_EXTRA = "pip install 'lightning-meta[plots]'"


def positive_ints(caller: str, name: str, values: Any, *, zero: bool = False) -> tuple[int, ...]:
    """A sorted tuple of distinct non-negative (``zero``) or positive integers, else a ``ValueError``."""
    least = 0 if zero else 1
    kind = "non-negative" if zero else "positive"
    try:
        items = tuple(values)
    except TypeError:
        items = ()
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < least for v in items):
        raise ValueError(f"{caller}: {name} must be a non-empty sequence of {kind} integers, got {values!r}.")
    return tuple(sorted(set(items)))


def require_matplotlib(caller: str) -> None:
    """Fail early, with the install command, when matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError(
            f"{caller} draws its figures with matplotlib, which is not installed: {PLOTS_EXTRA} "
            "(or pip install matplotlib)."
        )


def meta_learner(pl_module: L.LightningModule, caller: str) -> MetaLearner:
    """``pl_module`` if it is a :class:`~lightning_meta.learners.MetaLearner`, else a ``ValueError``."""
    if not isinstance(pl_module, MetaLearner):
        raise ValueError(
            f"{caller} evaluates meta-learners (subclasses of lightning_meta.learners.MetaLearner), "
            f"got {type(pl_module).__name__}."
        )
    return pl_module


def episodic_datamodule(trainer: L.Trainer, caller: str, split: str) -> EpisodicDataModule:
    """The trainer's :class:`~lightning_meta.data.EpisodicDataModule`, checked to hold ``split`` data."""
    datamodule = cast(Any, trainer).datamodule  # set by Trainer.fit; not in the Trainer's static type
    if not isinstance(datamodule, EpisodicDataModule):
        given = "no datamodule" if datamodule is None else type(datamodule).__name__
        raise ValueError(
            f"{caller} draws fixed {split} episodes from an EpisodicDataModule: call "
            f"trainer.fit(learner, datamodule=EpisodicDataModule(...)); got {given}."
        )
    if datamodule.data[split] is None:
        raise ValueError(f"{caller} needs {split} episodes: pass {split}=... to the EpisodicDataModule.")
    return datamodule


def episode_dataset(datamodule: EpisodicDataModule, split: str, *, shots: int | None = None) -> EpisodeDataset:
    """The fixed evaluation episodes of ``split``: those of the datamodule's own loader when ``shots`` is ``None``.

    With other ``shots`` the episodes are still fixed (seeded by the run's seed, the split and their index) but are
    different draws.
    """
    return EpisodeDataset(
        datamodule.tasks(split),
        stage=split,
        seed=datamodule.seed,
        ways=datamodule.eval_ways,
        shots=shots or datamodule.eval_shots,
        queries=datamodule.eval_queries,
    )


def fixed_episodes(
    trainer: L.Trainer, dataset: EpisodeDataset, *, episodes: int, tasks_per_batch: int, num_workers: int = 0
) -> DataLoader:
    """Meta-batches of the episodes ``0 .. episodes - 1`` of ``dataset``, dealt round-robin to the ranks.

    The same tasks as the datamodule's evaluation loader with ``eval_episodes=episodes``, each evaluated once over
    all ranks. The loader has a generator of its own, so iterating it draws nothing from torch's global generator.
    """
    sampler = EpisodeSampler(
        episodes, tasks_per_batch, train=False, rank=trainer.global_rank, world_size=trainer.world_size
    )
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        collate_fn=keep_episode,  # type: ignore[arg-type]
        num_workers=num_workers,
        generator=torch.Generator(),
    )


@contextlib.contextmanager
def undisturbed(pl_module: L.LightningModule) -> Iterator[None]:
    """Evaluation mode without autograd; every module's mode and every random generator's state restored after."""
    modes = {module: module.training for module in pl_module.modules()}
    device = pl_module.device
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            pl_module.eval()
            yield
    finally:
        for module, training in modes.items():
            module.training = training
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def to_device(trainer: L.Trainer, batch: Episode) -> Episode:
    """Move a meta-batch to the module's device and precision, as Lightning's own loops do."""
    batch = trainer.strategy.batch_to_device(batch)
    return trainer.precision_plugin.convert_input(batch)


def figure_dir(trainer: L.Trainer, dirpath: str | Path | None, name: str) -> Path:
    """Where a callback writes its figures: ``dirpath``, or ``<log_dir>/<name>``; call it on every rank."""
    if dirpath is not None:
        return Path(dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / name


def new_figure(figsize: tuple[float, float], dpi: int) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas (no pyplot, so no global figure registry)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def publish_figure(trainer: L.Trainer, figure: Any, path: Path, tag: str) -> None:
    """Render ``figure`` once, write it to ``path`` as a PNG and send it to every TensorBoard logger.

    Call it on global rank zero only.
    """
    from PIL import Image

    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, pixels, global_step=trainer.global_step, dataformats="HWC")
