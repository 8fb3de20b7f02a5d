"""ProtoNet on Omniglot within a CPU budget, next to the paper's numbers (Snell et al., 2017, Table 1).

Protocol (the paper's, except the length of training): Vinyals split (4112 train / 688 val / 1692 test classes:
1028/172/423 characters x 4 rotations), 28x28 grey images, Conv4 with 64 channels, squared Euclidean distance,
Adam at lr 1e-3, training episodes of ``--ways`` (paper: 60) ways, 5 shots and 5 queries, one task per step. The
paper trains for tens of thousands of episodes (halving the learning rate every 2000) on a GPU; here training
stops after ``--minutes`` of wall-clock (training plus the validation points of the curve), so the learning rate
never decays.

Outputs:
    * the curve: 5-way 1-shot accuracy on ``--curve-episodes`` fixed *validation* episodes against training
      episodes, at ``--points`` checkpoints (the test split is touched only once, at the end);
    * the table: 5-way and 20-way, 1-shot and 5-shot accuracy on 600 fixed test episodes (15 queries per class)
      with the 95% confidence interval, next to the paper's 98.8 / 99.7 / 96.0 / 98.9;
    * ``--out`` (JSON) with both.

Conv4 normalises with the statistics of each batch (lightning_meta.models.BatchStatNorm2d), at test time too:
each task's support set and query set are normalised with their own statistics (transductive, as in MAML), where
the paper's batch norm used running statistics at test time.

Example (what the README reports; the CPU was shared with other jobs, so the budget bought fewer episodes)::

    python benchmarks/protonet_omniglot.py --minutes 35 --root ../shared/data/omniglot --cache-dir /tmp/omniglot-cache \
        --out protonet_omniglot.json
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from rich.console import Console
from rich.table import Table

from lightning_meta.data import EpisodicDataModule
from lightning_meta.data.omniglot import Omniglot
from lightning_meta.learners import ProtoNet
from lightning_meta.models import Conv4
from lightning_meta.results import EpisodeResult, print_results

#: Snell et al. 2017, Table 1 (Omniglot, Vinyals split, trained 60-way): (ways, shots) -> accuracy in %.
PAPER = {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9}


class Curve(L.Callback):
    """Records (training episodes, seconds, val/acc, val/acc_ci95) at every validation."""

    def __init__(self) -> None:
        self.points: list[dict] = []
        self.start = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        point = {
            "episodes": trainer.global_step * trainer.datamodule.tasks_per_batch,
            "seconds": round(time.monotonic() - self.start, 1),
            "acc": float(trainer.callback_metrics["val/acc"]),
            "ci95": float(trainer.callback_metrics["val/acc_ci95"]),
        }
        self.points.append(point)
        print(
            f"  {point['episodes']:6d} episodes  {point['seconds']:7.0f} s  val 5-way 1-shot "
            f"{100 * point['acc']:.1f} ± {100 * point['ci95']:.1f} %",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))
    parser.add_argument("--cache-dir", default=None, help="where decoded images are cached (root is read-only)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of the fit")
    parser.add_argument("--ways", type=int, default=60)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--points", type=int, default=8, help="validation points on the curve")
    parser.add_argument("--episodes-per-point", type=int, default=0, help="override: train episodes between points")
    parser.add_argument("--curve-episodes", type=int, default=100)
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the curve and the table to this JSON file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load = time.monotonic()
    splits = {s: Omniglot(args.root, s, cache_dir=args.cache_dir) for s in ("train", "val", "test")}
    print(f"Omniglot (Vinyals, 28x28, rotations) loaded in {time.monotonic() - load:.0f} s: "
          + ", ".join(f"{s} {len(d)} images" for s, d in splits.items()), flush=True)  # fmt: skip

    # A rough step time (seconds per training episode) decides how many episodes lie between curve points.
    per_point = args.episodes_per_point
    if per_point <= 0:
        probe = ProtoNet(Conv4(in_channels=1, hidden=64, image_size=28))
        images = torch.rand(args.ways * (args.shots + args.queries), 1, 28, 28)
        tick = time.monotonic()
        for _ in range(2):
            probe.backbone(images).sum().backward()
        step = (time.monotonic() - tick) / 2
        per_point = max(10, int(args.minutes * 60 / step / args.points))
        print(f"~{step:.2f} s per {args.ways}-way episode: a curve point every {per_point} episodes", flush=True)

    fit_data = EpisodicDataModule(
        splits["train"], val=splits["val"], ways=args.ways, shots=args.shots, queries=args.queries,
        tasks_per_batch=1, eval_ways=5, eval_shots=1, eval_queries=15, eval_episodes=args.curve_episodes,
        eval_tasks_per_batch=25, train_episodes=10**7, seed=args.seed,
    )  # fmt: skip
    learner = ProtoNet(Conv4(in_channels=1, hidden=64, image_size=28), lr=1e-3)
    curve = Curve()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, max_time=timedelta(minutes=args.minutes),
        val_check_interval=per_point, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[curve],
    )  # fmt: skip
    print(f"Training {args.ways}-way {args.shots}-shot {args.queries}-query for {args.minutes:g} min "
          f"({args.threads} thread(s)); curve on {args.curve_episodes} val episodes:", flush=True)  # fmt: skip
    trainer.validate(learner, datamodule=fit_data, verbose=False)  # the untrained point
    curve.start = time.monotonic()
    trainer.fit(learner, datamodule=fit_data)
    trained = trainer.global_step
    if not curve.points or curve.points[-1]["episodes"] != trained:
        trainer.validate(learner, datamodule=fit_data, verbose=False)  # the final point
        curve.points[-1]["episodes"] = trained

    results: list[EpisodeResult] = []
    rows = []
    for ways, shots in PAPER:
        test_data = EpisodicDataModule(
            splits["train"], test=splits["test"], ways=ways, shots=shots, queries=15, eval_tasks_per_batch=20,
            eval_episodes=args.test_episodes, seed=args.seed,
        )  # fmt: skip
        tick = time.monotonic()
        tester = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_model_summary=False)  # fmt: skip
        (metrics,) = tester.test(learner, datamodule=test_data, verbose=False)
        result = EpisodeResult("ProtoNet", metrics["test/acc"], metrics["test/acc_ci95"], args.test_episodes,
                               "Omniglot", ways, shots)  # fmt: skip
        results.append(result)
        rows.append({"ways": ways, "shots": shots, "acc": result.accuracy, "ci95": result.ci95,
                     "paper": PAPER[ways, shots], "seconds": round(time.monotonic() - tick, 1)})  # fmt: skip
        print(f"  {result}  [paper {PAPER[ways, shots]} %]  ({time.monotonic() - tick:.0f} s)", flush=True)

    title = f"ProtoNet on Omniglot after {trained} {args.ways}-way episodes ({args.minutes:g} min)"
    print_results(results, title=title)
    table = Table(title="Against Snell et al. 2017 (Table 1)")
    for column in ("Task", "This run", "Paper", "Gap"):
        table.add_column(column, justify="right")
    for row in rows:
        gap = 100 * row["acc"] - row["paper"]
        table.add_row(f"{row['ways']}-way {row['shots']}-shot", f"{100 * row['acc']:.1f} ± {100 * row['ci95']:.1f} %",
                      f"{row['paper']:.1f} %", f"{gap:+.1f}")  # fmt: skip
    Console().print(table)
    if args.out:
        report = {"args": vars(args), "train_episodes": trained, "curve": curve.points, "test": rows}
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
