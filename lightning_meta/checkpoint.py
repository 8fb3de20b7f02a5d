"""Clear errors for checkpoints that cannot be read, naming the intact ones beside them.

Lightning writes checkpoints atomically (to a temporary file, then renamed), so a run killed while saving leaves the
previous checkpoint intact and no half-written file under the checkpoint's name. A checkpoint can still arrive cut
short or damaged (an interrupted copy, a full disk on a file system without atomic renames, a bad transfer); PyTorch
then fails with an internal zip-reader message. Here such a failure becomes a :class:`CorruptCheckpointError` that
says what is wrong with which file and lists the readable checkpoints in the same folder to resume from instead.

:class:`~lightning_meta.learners.MetaLearner` uses this both for ``Learner.load_from_checkpoint(path)`` and for
``trainer.fit(..., ckpt_path=...)`` (its ``setup`` hook gives the Trainer's default checkpoint IO this check).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, TypeAlias

from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

#: A local checkpoint path (what Lightning's checkpoint IO receives).
CheckpointPath: TypeAlias = str | Path


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file is empty, truncated or damaged."""


def checkpoint_problem(path: CheckpointPath) -> str | None:
    """What is wrong with a local checkpoint file, or ``None`` when it reads as an intact PyTorch archive.

    PyTorch saves a zip archive with a CRC-32 per member: a cut-short file has lost its central directory (at the end
    of the file) and a damaged one fails a CRC (which ``torch.load`` does not check).

    Example:
        >>> import tempfile, torch
        >>> path = Path(tempfile.mkdtemp()) / "model.ckpt"
        >>> torch.save({"w": torch.zeros(100)}, path)
        >>> checkpoint_problem(path) is None
        True
        >>> path.write_bytes(path.read_bytes()[:300]) and checkpoint_problem(path)
        'cut short or not a checkpoint: 300 bytes without the zip directory a PyTorch file ends with'
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty: 0 bytes"
    if not zipfile.is_zipfile(path):
        return f"cut short or not a checkpoint: {size} bytes without the zip directory a PyTorch file ends with"
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"damaged: {error}"
    if bad_member is not None:
        return f"damaged: member {bad_member!r} fails its CRC check"
    return None


def _readable_neighbours(path: Path) -> list[Path]:
    """The other ``*.ckpt`` files in the folder of ``path`` that pass :func:`checkpoint_problem`, newest first."""
    try:
        others = [p for p in path.parent.glob("*.ckpt") if p.resolve() != path.resolve() and p.is_file()]
    except OSError:
        return []
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [p for p in others if checkpoint_problem(p) is None]


def raise_if_corrupt(path: Any) -> None:
    """Raise :class:`CorruptCheckpointError` when the local file at ``path`` is unreadable.

    Reads the whole file once to check its CRCs (measured: 16-23 ms for 50 MB in the page cache), since PyTorch
    loads a damaged weight without complaint. Does nothing for paths that are not local files (remote URLs, file
    objects) or for intact files.
    """
    if not isinstance(path, (str, os.PathLike)) or "://" in str(path) or not Path(path).is_file():
        return
    problem = checkpoint_problem(Path(path))
    if problem is None:
        return
    neighbours = _readable_neighbours(Path(path))
    if neighbours:
        advice = "Intact checkpoints in the same folder, newest first: " + ", ".join(str(p) for p in neighbours[:5])
        advice += f"; resume from one with ckpt_path='{neighbours[0]}'."
    else:
        advice = "No intact checkpoint was found beside it."
    raise CorruptCheckpointError(f"Checkpoint {path} cannot be read, it is {problem}. {advice}")


class CheckedCheckpointIO(TorchCheckpointIO):
    """Lightning's default checkpoint IO, with :class:`CorruptCheckpointError` for unreadable files.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(plugins=[CheckedCheckpointIO()], logger=False, enable_progress_bar=False)
        >>> type(trainer.strategy.checkpoint_io).__name__
        'CheckedCheckpointIO'
    """

    @override
    def load_checkpoint(self, path: CheckpointPath, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise_if_corrupt(path)
        return super().load_checkpoint(path, *args, **kwargs)


def upgrade_checkpoint(source: CheckpointPath, destination: CheckpointPath) -> list[str]:
    """Rewrite a checkpoint saved before :class:`~lightning_meta.InnerLoop` into the current form.

    Checkpoints of the release before InnerLoop saved a gradient learner's inner-loop settings as its own keywords
    (``inner_lr``, ``inner_steps``, ``strategy``, ...). ``Learner.load_from_checkpoint`` translates them by itself;
    ``lightning-meta test --ckpt_path`` (LightningCLI reads the saved hyperparameters into the config) needs the
    file rewritten: ``python -m lightning_meta.upgrade OLD.ckpt NEW.ckpt``. Weights, optimizer and loop
    states are copied unchanged.

    Returns:
        The former keywords that were translated (empty: the checkpoint needed nothing, and is copied as it is).
    """
    import torch

    from lightning_meta.hparams import LEGACY_INNER_LOOP, legacy_inner_loop

    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    hparams = checkpoint.get("hyper_parameters") or {}
    legacy = {k: hparams.pop(k) for k in list(hparams) if k in LEGACY_INNER_LOOP}
    if legacy and "inner_loop" not in hparams:
        hparams["inner_loop"] = legacy_inner_loop(legacy)
    if "chosen_strategy" in checkpoint and "chosen_vectorize" not in checkpoint:
        checkpoint["chosen_vectorize"] = checkpoint.pop("chosen_strategy")
    torch.save(checkpoint, destination)
    return sorted(legacy)
