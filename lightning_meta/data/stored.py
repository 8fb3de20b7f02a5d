"""StoredImages: the base of the datasets decoded once into a cached uint8 tensor (CIFAR-FS, FC100, CUB, tiered)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset


class StoredImages(Dataset):
    """A dataset of RGB images held as one uint8 tensor ``_images`` ``[N, S, S, 3]`` with integer ``labels``.

    Subclasses decode their files once (through :func:`~lightning_meta.data.download.load_or_build`), set ``_images``
    and ``labels``, and name themselves with ``name``. Items are ``(float image [3, S, S] in [0, 1], label)``;
    :meth:`gather_inputs` is the fast path that :class:`~lightning_meta.data.tasks.LabelledTasks` uses.
    """

    name: ClassVar[str] = "StoredImages"
    _images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name} index {index} out of range for {len(self)} examples.")
        index %= len(self)
        return self.gather_inputs(torch.tensor([index]))[0], int(self.labels[index])

    def gather_inputs(self, index: Tensor) -> Tensor:
        """Stacked float inputs ``[len(index), 3, S, S]`` in ``[0, 1]`` of the examples ``index``."""
        pixels = self._images.index_select(0, torch.as_tensor(index, dtype=torch.long))
        return pixels.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format).div_(255)


def size_and_mtime(path: Path) -> tuple[int, int]:
    """A file's size and modification time in nanoseconds: its identity in a cache key."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns
