"""Does a trained SNAIL read a support example's label, or its position in the sequence?

    python benchmarks/snail_support_order.py CKPT --ways 20 [--root DIR] [--cache-dir DIR] [--episodes 40]

Loads a SNAIL checkpoint and tests it on Omniglot test episodes (``--episodes`` per setting, 5 queries per class,
seed 1) twice: with the support set in class order, as task families draw it (class 0's examples, then class 1's,
...; labels ``arange(ways).repeat_interleave(shots)``), and with the same support examples and labels shuffled by one
random permutation per episode, as the package's episodes present them since they shuffle the support set. A model
that reads the label inputs scores the same on both; one that learned "the i-th support example is class i" (what
SNAIL learned when training support sets were in class order) falls to chance on shuffled support, and on more shots
than it was trained with (positions no longer match classes).

Prints the mean accuracy in % for 1 and 5 shots, both orders.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lightning_meta import Episode
from lightning_meta.data import Omniglot
from lightning_meta.data.tasks import LabelledTasks
from lightning_meta.learners import SNAIL
from lightning_meta.metrics import per_episode_accuracy

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a SNAIL checkpoint (.ckpt) trained on Omniglot")
    parser.add_argument("--ways", type=int, required=True, help="the ways the checkpoint was trained for")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--cache-dir", default=None, help="where decoded images are cached (root is read-only)")
    parser.add_argument("--episodes", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    learner = SNAIL.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    tasks = LabelledTasks(Omniglot(args.root, "test", cache_dir=args.cache_dir), split="test")
    generator = torch.Generator().manual_seed(1)
    for shots in (1, 5):
        episodes: dict[str, list[Episode]] = {"class order": [], "shuffled": []}
        for _ in range(args.episodes):
            task = tasks.sample(generator, ways=args.ways, shots=shots, queries=5)
            order = torch.randperm(task.support_y.numel(), generator=generator)
            episodes["class order"].append(task)
            episodes["shuffled"].append(
                Episode(task.support_x[order], task.support_y[order], task.query_x, task.query_y, ways=args.ways)
            )
        accuracy = {}
        for name, tasks_in_order in episodes.items():
            batch = Episode.stack(tasks_in_order)
            with torch.inference_mode():
                accuracy[name] = per_episode_accuracy(learner(batch), batch.query_y).mean().item()
        figures = ", ".join(f"{name} {100 * a:.1f} %" for name, a in accuracy.items())
        print(f"{args.ways}-way {shots}-shot, {args.episodes} test episodes: {figures}", flush=True)


if __name__ == "__main__":
    main()
