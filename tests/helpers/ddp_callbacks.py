"""A 2-process DDP fit with the file-writing callbacks (used by tests/callbacks/test_ddp.py).

``python -m tests.helpers.ddp_callbacks --devices 2 --out DIR`` fits MAML on glyph images for two epochs with
``Trainer(strategy="ddp", devices=2)``, ``AdaptationCurve``, ``EpisodeGallery`` and ``MetaTest``, logging to a
``CSVLogger`` in ``DIR/logs``. Every PNG written by any process is recorded in ``DIR/writes-rank{R}.txt``; rank 0
saves the final weights to ``DIR/final.pt`` and the world size to ``DIR/world_size.txt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from lightning_meta.callbacks import AdaptationCurve, EpisodeGallery, MetaTest
from lightning_meta.distributed import end_process_group
from tests.helpers.callback_runs import image_datamodule, image_maml
from tests.helpers.trainers import quiet_trainer

#: The settings the test recomputes in one process.
EPISODES = 9  # dealt 5 and 4 to the two ranks
STEPS = (0, 1, 2)


def datamodule():
    return image_datamodule(eval_episodes=EPISODES, tasks_per_batch=2, train_episodes=16)


def record_writes(out: Path) -> None:
    """Make every process log each image file it saves."""
    save = Image.Image.save

    def recording_save(self, fp, *args, **kwargs):
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        with open(out / f"writes-rank{rank}.txt", "a") as f:
            f.write(f"{fp}\n")
        return save(self, fp, *args, **kwargs)

    Image.Image.save = recording_save  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    record_writes(args.out)
    torch.manual_seed(0)
    learner = image_maml()
    trainer = quiet_trainer(
        devices=args.devices,
        max_epochs=2,
        logger=CSVLogger(args.out / "logs"),
        callbacks=[AdaptationCurve(steps=STEPS, episodes=EPISODES), EpisodeGallery(), MetaTest(episodes=EPISODES)],
        num_sanity_val_steps=0,
    )
    trainer.fit(learner, datamodule())
    if trainer.global_rank == 0:
        torch.save(learner.state_dict(), args.out / "final.pt")
        (args.out / "world_size.txt").write_text(str(trainer.world_size))


if __name__ == "__main__":
    main()
    end_process_group()  # without it, gloo can abort the process at exit (SIGABRT) after the work is done
