"""Meta-train on your own labelled images: a torchvision ``ImageFolder`` through ``EpisodicDataModule``.

    python examples/image_folder.py --train my_images/train --val my_images/val --max-steps 500

The folders are in torchvision's ``ImageFolder`` layout, one sub-folder per class (``train/<class>/<image>``);
training and validation classes should be disjoint, since few-shot learning is tested on classes never seen in
training. Nothing of lightning-meta is used beyond the datamodule and a learner: the dataset is torchvision's, the
Trainer is Lightning's. ``EpisodicDataModule`` reads the classes from ``ImageFolder.targets`` without opening an
image; each episode then loads only its own images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
from torchvision import transforms
from torchvision.datasets import ImageFolder

from lightning_meta.data import EpisodicDataModule
from lightning_meta.learners import ProtoNet
from lightning_meta.models import Conv4


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="ImageFolder of the training classes")
    parser.add_argument("--val", type=Path, required=True, help="ImageFolder of the held-out classes")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/image_folder"))
    args = parser.parse_args(argv)

    L.seed_everything(0)
    to_tensor = transforms.Compose(
        [transforms.Grayscale(), transforms.Resize((args.image_size, args.image_size)), transforms.ToTensor()]
    )
    data = EpisodicDataModule(
        ImageFolder(args.train, transform=to_tensor),
        ImageFolder(args.val, transform=to_tensor),
        ways=args.ways,
        shots=args.shots,
        queries=args.queries,
        tasks_per_batch=4,
        train_episodes=400,
        eval_episodes=args.eval_episodes,
    )
    learner = ProtoNet(Conv4(in_channels=1, hidden=64, out_features=None, image_size=args.image_size))
    trainer = L.Trainer(accelerator="auto", max_steps=args.max_steps, default_root_dir=args.out,
                        enable_progress_bar=False)  # fmt: skip
    trainer.fit(learner, data)
    results = trainer.validate(learner, data, verbose=False)[0]
    print(
        f"{args.ways}-way {args.shots}-shot accuracy on held-out classes: "
        f"{results['val/acc']:.3f} ± {results['val/acc_ci95']:.3f}"
    )
    return results


if __name__ == "__main__":
    main()
