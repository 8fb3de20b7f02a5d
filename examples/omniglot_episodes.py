"""Draw a few 5-way 1-shot Omniglot episodes through ``EpisodicDataModule`` and save them as a labelled image grid.

    python examples/omniglot_episodes.py --root ../shared/data/omniglot --out episodes.png

Each block is one episode: the top row holds the support set (one drawing per class, titled with the class it was
drawn from and the label it gets in this episode), the rows below hold query drawings of the same labels.
The first run decodes the PNGs into a cache (a few seconds); later runs start at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # write files; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lightning_meta.data import EpisodicDataModule  # noqa: E402
from lightning_meta.data.omniglot import Omniglot  # noqa: E402


def class_lookup(dataset: Omniglot) -> dict[bytes, str]:
    """Map the pixels of every example to its class name (episodes carry labels 0..N-1 only)."""
    pixels = (dataset.gather_inputs(torch.arange(len(dataset))) * 255).round().to(torch.uint8).flatten(1).numpy()
    return {row.tobytes(): dataset.classes[label] for row, label in zip(pixels, dataset.labels.tolist(), strict=True)}


def class_name(lookup: dict[bytes, str], image: torch.Tensor) -> str:
    """The class of one input image, found by its pixels."""
    return lookup.get((image * 255).round().to(torch.uint8).flatten().numpy().tobytes(), "?")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/omniglot"), help="Omniglot files")
    parser.add_argument("--out", type=Path, default=Path("episodes.png"), help="PNG to write")
    parser.add_argument("--split", default="test", help="Vinyals split to draw from")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--queries", type=int, default=2, help="query rows shown per episode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache folder if --root is read-only")
    args = parser.parse_args(argv)

    dataset = Omniglot(args.root, args.split, cache_dir=args.cache_dir)
    datamodule = EpisodicDataModule(
        dataset,
        ways=args.ways,
        shots=1,
        queries=args.queries,
        tasks_per_batch=args.episodes,
        train_episodes=args.episodes,
        seed=args.seed,
    )
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))  # one meta-batch: args.episodes tasks

    lookup = class_lookup(dataset)
    rows = 1 + args.queries
    figure = plt.figure(figsize=(1.5 * args.ways, 1.45 * rows * args.episodes + 0.4), layout="constrained")
    figure.suptitle(f"Omniglot ({args.split} split), {args.ways}-way 1-shot episodes", fontsize=12)
    for block, task in zip(figure.subfigures(args.episodes, 1), batch, strict=True):
        block.suptitle(f"episode {int(task.task_ids)}", fontsize=10, x=0.02, ha="left")
        names = [class_name(lookup, image) for image in task.support_x]
        axes = block.subplots(rows, args.ways, squeeze=False)
        for label in range(args.ways):
            queries = task.query_x[task.query_y == label]
            images = [task.support_x[task.support_y == label][0], *queries]
            for row, image in enumerate(images):
                ax = axes[row, label]
                ax.imshow(image[0].numpy(), cmap="gray_r", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    alphabet, _, rest = names[label].partition("/")
                    ax.set_title(f"label {label}\n{alphabet[:18]}\n{rest.replace('/', ' ')}", fontsize=7)
                if label == 0:
                    ax.set_ylabel("support" if row == 0 else f"query {row}", fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    plt.close(figure)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
