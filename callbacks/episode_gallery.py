"""EpisodeGallery: a picture of one validation episode, its support set by class and its predicted queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_meta._checks import positive_int
from lightning_meta.callbacks._evaluation import (
    episode_dataset,
    episodic_datamodule,
    figure_dir,
    meta_learner,
    new_figure,
    publish_figure,
    require_matplotlib,
    to_device,
    undisturbed,
)
from lightning_meta.episode import Episode

_RIGHT, _WRONG, _SUPPORT = "#1a9850", "#d73027", "0.55"
#: The narrowest grid, in cells: room for the title lines.
_MIN_COLUMNS = 8


def image_shape_ok(input_shape: tuple[int, ...]) -> bool:
    """Whether inputs of this shape are images: ``[H, W]`` or ``[C, H, W]`` with 1 or 3 channels."""
    return len(input_shape) == 2 or (len(input_shape) == 3 and input_shape[0] in (1, 3))


def to_picture(x: Tensor) -> np.ndarray:
    """An image tensor as an ``[H, W]`` or ``[H, W, 3]`` array in ``[0, 1]`` (rescaled when it lies outside)."""
    array = x.detach().float().cpu().numpy()
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return array


class EpisodeGallery(Callback):
    """Draw one fixed validation episode with the learner's predictions: support by class, queries marked.

    Every ``every_n_epochs`` training epochs (at the end of the epoch) the learner adapts to validation episode
    ``episode_index`` (the datamodule's own fixed episode with that index) and predicts its queries. The PNG
    ``{dirpath}/epoch={epoch}.png`` shows one row per class: on the left the support images of that class, on the
    right its query images, each titled with the predicted class; a wrong prediction gets a red frame and a red
    title with a cross, a right one a green frame. The title gives the query accuracy over the whole query set.
    With a ``TensorBoardLogger`` the picture also goes to TensorBoard under the tag ``episode_gallery``.

    At most ``max_classes`` classes, ``max_shots`` support and ``max_queries`` query images per class are drawn.
    Each image gets a cell of ``cell_pixels`` pixels; the PNG is ``cell_pixels * max(8, shots + queries + 2)``
    pixels wide and ``cell_pixels * (classes + 2)`` high, with the drawn counts. Images are ``[H, W]`` or ``[C, H, W]``
    inputs with 1 or 3 channels, shown as they are when they lie in ``[0, 1]`` (Omniglot: ink is 1) and rescaled to
    it otherwise (normalised mini-ImageNet). Regression tasks with one input and one output (sinusoids) are drawn
    as a plot instead (support points, query targets and predictions; ``figsize`` inches). For other inputs the
    callback warns that it does not apply and draws nothing.

    Only global rank zero evaluates and writes; the evaluation disturbs nothing (see
    :class:`~lightning_meta.callbacks.MetaTest`).

    Args:
        episode_index: which fixed validation episode to draw.
        every_n_epochs: draw after every ``every_n_epochs``-th training epoch.
        max_classes: most classes (rows) drawn.
        max_shots: most support images drawn per class.
        max_queries: most query images drawn per class.
        cell_pixels: side of the square cell of one image, in pixels.
        dpi: dots per inch (sets the font size relative to the pixels).
        figsize: size in inches of the regression plot.
        cmap: matplotlib colour map of one-channel images.
        dirpath: folder of the PNGs (default: ``<trainer.log_dir>/episode_gallery``).

    Raises:
        ValueError: for bad arguments; at ``fit`` when the learner is not a
            :class:`~lightning_meta.learners.MetaLearner` or the datamodule is not an ``EpisodicDataModule`` with
            validation data.
        ImportError: when matplotlib is not installed (``pip install 'lightning-meta[plots]'``).

    Example:
        >>> import torch
        >>> from lightning_meta import Episode
        >>> task = Episode(torch.rand(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]), torch.rand(2, 1, 8, 8),
        ...                torch.tensor([0, 1]), ways=2)
        >>> gallery = EpisodeGallery(cell_pixels=50)
        >>> figure = gallery.draw(task, torch.tensor([[2.0, 0.0], [3.0, 1.0]]), title="two-way toy episode")
        >>> figure.canvas.draw(); figure.canvas.get_width_height()  # at least 8 cells wide, (2 classes + 2) high
        (400, 200)
    """

    def __init__(
        self,
        *,
        episode_index: int = 0,
        every_n_epochs: int = 1,
        max_classes: int = 10,
        max_shots: int = 5,
        max_queries: int = 5,
        cell_pixels: int = 72,
        dpi: int = 100,
        figsize: tuple[float, float] = (6.4, 4.8),
        cmap: str = "gray",
        dirpath: str | Path | None = None,
    ) -> None:
        if isinstance(episode_index, bool) or not isinstance(episode_index, int) or episode_index < 0:
            raise ValueError(f"EpisodeGallery: episode_index must be a non-negative integer, got {episode_index!r}.")
        self.episode_index = episode_index
        self.every_n_epochs = positive_int("EpisodeGallery", "every_n_epochs", every_n_epochs)
        self.max_classes = positive_int("EpisodeGallery", "max_classes", max_classes)
        self.max_shots = positive_int("EpisodeGallery", "max_shots", max_shots)
        self.max_queries = positive_int("EpisodeGallery", "max_queries", max_queries)
        self.cell_pixels = positive_int("EpisodeGallery", "cell_pixels", cell_pixels)
        if self.cell_pixels < 32:
            raise ValueError(f"EpisodeGallery: cell_pixels must be at least 32 (room for a title), got {cell_pixels}.")
        self.dpi = positive_int("EpisodeGallery", "dpi", dpi)
        if len(figsize) != 2 or not all(isinstance(v, int | float) and v > 0 for v in figsize):
            raise ValueError(f"EpisodeGallery: figsize must be two positive numbers (inches), got {figsize!r}.")
        self.figsize = (float(figsize[0]), float(figsize[1]))
        require_matplotlib("EpisodeGallery")
        import matplotlib

        if cmap not in matplotlib.colormaps:
            raise ValueError(f"EpisodeGallery: cmap must name a matplotlib colour map (e.g. 'gray'), got {cmap!r}.")
        self.cmap = cmap
        self.dirpath = dirpath
        self._dir = Path(".")
        self._applies = True

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(episode_index=self.episode_index, dirpath=str(self.dirpath))

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        meta_learner(pl_module, "EpisodeGallery")
        datamodule = episodic_datamodule(trainer, "EpisodeGallery", "val")
        self._dir = figure_dir(trainer, self.dirpath, "episode_gallery")  # on every rank: log_dir broadcasts
        task = episode_dataset(datamodule, "val").episode(0, self.episode_index)
        self._applies = task.is_classification and image_shape_ok(tuple(task.support_x.shape[1:]))
        self._applies = self._applies or _is_1d_regression(task)
        if not self._applies:
            rank_zero_warn(
                "EpisodeGallery does not apply to these episodes: it draws images ([H, W] or [C, H, W] inputs with 1 "
                "or 3 channels) and regression tasks with one input and one output; the validation inputs have "
                f"shape {tuple(task.support_x.shape[1:])} and targets {tuple(task.support_y.shape[1:])}. "
                "Nothing will be drawn."
            )

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._applies or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if not trainer.is_global_zero:
            return
        learner = meta_learner(pl_module, "EpisodeGallery")
        datamodule = episodic_datamodule(trainer, "EpisodeGallery", "val")
        task = episode_dataset(datamodule, "val").episode(0, self.episode_index)
        with undisturbed(learner), trainer.precision_plugin.val_step_context():
            predictions = learner.predict_step(to_device(trainer, Episode.stack([task])), 0)[0]
        epoch = trainer.current_epoch
        title = f"{type(learner).__name__}, validation episode {self.episode_index}, after epoch {epoch}"
        figure = self.draw(task, predictions, title=title)
        publish_figure(trainer, figure, self._dir / f"epoch={epoch}.png", "episode_gallery")

    # ------------------------------------------------------------------------------------------------ drawing
    def draw(self, task: Episode, predictions: Tensor, *, title: str) -> Any:
        """The figure of one task (unbatched) and its query predictions (logits, or regression outputs)."""
        if task.is_classification:
            return self._draw_images(task, predictions, title)
        return self._draw_regression(task, predictions, title)

    def _draw_images(self, task: Episode, logits: Tensor, title: str) -> Any:
        ways = int(task.ways or 0)
        predicted = logits.argmax(-1).cpu()
        support_y, query_y = task.support_y.cpu(), task.query_y.cpu()
        correct = int((predicted == query_y).sum())
        classes = min(ways, self.max_classes)
        shots_per_class = int((support_y == 0).sum())
        queries_per_class = int((query_y == 0).sum())
        shots = min(shots_per_class, self.max_shots)
        queries = min(queries_per_class, self.max_queries)
        # At least _MIN_COLUMNS cells wide, the grid centred, so that the titles fit above one or two images.
        columns, rows = max(shots + queries + 2, _MIN_COLUMNS), classes + 2
        x0 = (columns - (shots + queries + 2)) / 2
        cell = self.cell_pixels
        # Half a pixel more than the grid, so that matplotlib's rounding down of the canvas size lands on the grid.
        figure = new_figure(((columns * cell + 0.5) / self.dpi, (rows * cell + 0.5) / self.dpi), self.dpi)
        width, height = columns * cell, rows * cell
        fontsize = max(6.0, min(9.0, cell / 9))

        def cell_axes(row: int, column: float) -> Any:
            """Axes of the image in grid cell (row, column); column 0 is the label column, row 0 the first class."""
            pad, title_room = 0.08 * cell, 0.22 * cell
            left = (x0 + column) * cell + pad
            bottom = height - (1.4 + row + 1) * cell + pad
            side = cell - 2 * pad - title_room * 0.6
            return figure.add_axes((left / width, bottom / height, side / width, side / height))

        def show(ax: Any, x: Tensor, frame: str, linewidth: float) -> None:
            picture = to_picture(x)
            ax.imshow(picture, cmap=self.cmap if picture.ndim == 2 else None, vmin=0.0, vmax=1.0,
                      interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(frame)
                spine.set_linewidth(linewidth)

        query_left = 1 + shots + 0.5
        for c in range(classes):
            row_middle = 1 - (1.4 + c + 0.5) * cell / height
            label_x = (x0 + 0.5) * cell / width
            figure.text(label_x, row_middle, f"class {c}", ha="center", va="center", fontsize=fontsize + 1,
                        fontweight="bold")  # fmt: skip
            for i, index in enumerate((support_y == c).nonzero().flatten()[:shots].tolist()):
                show(cell_axes(c, 1 + i), task.support_x[index], _SUPPORT, 1.0)
            for i, index in enumerate((query_y == c).nonzero().flatten()[:queries].tolist()):
                ax = cell_axes(c, query_left + i)
                guess = int(predicted[index])
                right = guess == c
                show(ax, task.query_x[index], _RIGHT if right else _WRONG, 1.5 if right else 3.5)
                label, colour = (f"pred {guess}", _RIGHT) if right else (f"pred {guess} \u2717", _WRONG)
                ax.set_title(label, fontsize=fontsize, color=colour, fontweight="normal" if right else "bold", pad=2)
        header = 1 - 1.2 * cell / height
        figure.text((x0 + 1 + shots / 2) * cell / width, header, f"support\n{shots_per_class} per class",
                    ha="center", va="bottom", fontsize=fontsize + 1, linespacing=1.1)  # fmt: skip
        shown = f"{queries} of {queries_per_class}" if queries < queries_per_class else f"{queries_per_class}"
        figure.text((x0 + query_left + queries / 2) * cell / width, header, f"queries\n{shown} per class",
                    ha="center", va="bottom", fontsize=fontsize + 1, linespacing=1.1)  # fmt: skip
        total = query_y.numel()
        more = f", {classes} of {ways} classes drawn" if classes < ways else ""
        figure.text(0.5, 1 - 0.12 * cell / height, title, ha="center", va="top", fontsize=fontsize + 2,
                    fontweight="bold")  # fmt: skip
        setting = f"{ways}-way {shots_per_class}-shot: query accuracy {correct}/{total} ({100 * correct / total:.0f}%)"
        figure.text(0.5, 1 - 0.45 * cell / height, setting + more, ha="center", va="top", fontsize=fontsize + 1)
        figure.text(0.5, 0.3 * cell / height,
                    "rows: true class; above each query: its predicted class; red frame and \u2717: wrong",
                    ha="center", va="center", fontsize=fontsize, wrap=True)  # fmt: skip
        return figure

    def _draw_regression(self, task: Episode, predictions: Tensor, title: str) -> Any:
        figure = new_figure(self.figsize, self.dpi)
        ax = figure.add_subplot()
        support_x, support_y = task.support_x.flatten().cpu().numpy(), task.support_y.flatten().cpu().numpy()
        query_x, query_y = task.query_x.flatten().cpu().numpy(), task.query_y.flatten().cpu().numpy()
        predicted = predictions.detach().float().flatten().cpu().numpy()
        order = np.argsort(query_x)
        mse = float(((predicted - query_y) ** 2).mean())
        ax.plot(query_x[order], query_y[order], "o-", color="C0", markersize=4, linewidth=1, label="query targets")
        ax.plot(query_x[order], predicted[order], "x--", color="C1", markersize=6, linewidth=1,
                label="query predictions (after adaptation)")  # fmt: skip
        ax.scatter(support_x, support_y, s=60, color="black", marker="^", zorder=3, label="support points")
        ax.set_xlabel("input x")
        ax.set_ylabel("target y")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        ax.set_title(f"{title}\n{len(support_x)} support points, query MSE {mse:.3g}", fontsize=10)
        figure.tight_layout()
        return figure


def _is_1d_regression(task: Episode) -> bool:
    return not task.is_classification and task.support_x[0].numel() == 1 and task.support_y[0].numel() == 1
