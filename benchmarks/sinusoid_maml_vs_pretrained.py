"""MAML against a pretrained network on sinusoid regression (Finn, Abbeel and Levine, ICML 2017, section 5.1, Fig. 2).

The paper's settings (section 5.1 and cbfinn/maml ``main.py``, whose sinusoid commands are quoted there):

* tasks ``y = A sin(x - phase)``, ``A`` in [0.1, 5], phase in [0, pi], ``x`` uniform in [-5, 5]
  (:class:`lightning_meta.data.Sinusoid`'s defaults);
* a 1-40-40-1 ReLU MLP (:class:`lightning_meta.models.MLP`'s defaults), no normalisation (``--norm=None``);
* MAML: one inner SGD step of 0.01 in training (the paper's alpha; the reference command leaves ``--update_lr`` at its
  default, 1e-3), K support and K query points per task (``DataGenerator(update_batch_size*2)``), meta-batch 25,
  Adam at 1e-3, 70,000 meta-steps (``--metatrain_iterations=70000``), second order;
* the pretrained baseline: the same MLP trained by Adam at 1e-3 on the K=10 support points of 25 tasks per step,
  without adaptation (``--pretrain_iterations=70000 --metatrain_iterations=0 --update_batch_size=10``: ``pretrain_op``
  minimises the pre-update loss), then fine-tuned on each test task by the same SGD inner steps as MAML;
* evaluation: 600 test tasks, mean and 95% interval ``1.96 * std / sqrt(600)`` (``NUM_TEST_POINTS = 600`` in
  ``main.py``'s ``test``), K = 5, 10, 20 support points, the query MSE after 1 and 10 inner steps.

Differences: this script trains for at most ``--minutes`` of wall-clock per model (the JSON records the meta-steps
reached); MAML is meta-trained once per K with K support and K query points (the reference's
``update_batch_size=K``); the query set of a test task is 100 points (the reference uses K), which estimates the same
per-task MSE with less noise; the pretrained network is also fine-tuned with the step sizes of the paper's Fig. 2
(0.01 for K=5, 0.02 for K=10) when ``--pretrained-lrs`` lists them.

Every model is trained by a Lightning ``Trainer`` on an :class:`~lightning_meta.data.EpisodicDataModule` of
:class:`~lightning_meta.data.Sinusoid` tasks; MAML is the package's :class:`~lightning_meta.learners.MAML`; the
fine-tuning of both networks at test time is :meth:`~lightning_meta.learners.gradient.GradientLearner.predictions_after`
(the package's inner loop), on the same fixed test episodes.

Usage (each ``train`` is its own process, so they can run side by side, one thread each)::

    W=/tmp/lightning-meta-sinusoid S=benchmarks/sinusoid_maml_vs_pretrained.py
    for k in 5 10 20; do python $S train maml --shots $k --minutes 25 --workdir $W & done
    python $S train pretrained --shots 10 --minutes 25 --workdir $W &
    wait
    python $S evaluate --workdir $W --out benchmarks/results/sinusoid.json --plot benchmarks/results/sinusoid_curves.png

A budget too short for one go can be continued: ``train ... --resume --seed 1 --minutes M`` loads the saved weights
(with a fresh Adam state and new training tasks) and adds the session's meta-steps and wall time to the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_meta import InnerLoop
from lightning_meta.data import EpisodicDataModule, Sinusoid
from lightning_meta.episode import Episode
from lightning_meta.learners import MAML
from lightning_meta.metrics import mean_and_ci95, per_episode_mse
from lightning_meta.models import MLP

TASKS_PER_BATCH = 25  # meta_batch_size default of cbfinn/maml main.py
META_LR = 1e-3  # meta_lr
INNER_LR = 0.01  # the paper's alpha (section 5.1)
PAPER_STEPS = 70_000  # --metatrain_iterations / --pretrain_iterations
EVAL_SHOTS = (5, 10, 20)
EVAL_STEPS = (0, 1, 10)
CURVE_STEPS = tuple(range(11))


class Pretrained(L.LightningModule):
    """The paper's pretrained baseline: one regressor fitted to the support points of every task, no adaptation."""

    def __init__(self, *, lr: float = META_LR) -> None:
        super().__init__()
        self.model = MLP()
        self.lr = lr

    def training_step(self, batch: Episode, batch_idx: int) -> Tensor:
        loss = F.mse_loss(self.model(batch.support_x.flatten(0, 1)), batch.support_y.flatten(0, 1))
        self.log("train/loss", loss, batch_size=batch.n_tasks)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data = EpisodicDataModule(
        Sinusoid(), shots=args.shots, queries=args.shots, tasks_per_batch=TASKS_PER_BATCH,
        train_episodes=TASKS_PER_BATCH * args.max_steps, seed=args.seed,
    )  # fmt: skip
    if args.method == "maml":
        module: L.LightningModule = MAML(
            MLP(), inner_loop=InnerLoop(lr=INNER_LR, steps=1, vectorize="vmap"), lr=META_LR
        )
    else:
        module = Pretrained(lr=META_LR)
    out = Path(args.workdir)
    name = f"{args.method}_k{args.shots}"
    before = {"meta_steps": 0, "wall_seconds": 0.0, "sessions": []}
    if args.resume:  # continue from this model's saved weights (a fresh Adam state; the JSON counts both sessions)
        before = json.loads((out / f"{name}.json").read_text())
        module.model.load_state_dict(torch.load(out / f"{name}.pt", weights_only=True))
        before.setdefault("sessions", [{k: before[k] for k in ("meta_steps", "wall_seconds", "seed") if k in before}])
        args.max_steps -= before["meta_steps"]
        if args.max_steps <= 0:
            print(f"{name} already has {before['meta_steps']} meta-steps: nothing to do", flush=True)
            return
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, max_steps=args.max_steps,
        max_time=timedelta(minutes=args.minutes), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    start = time.monotonic()
    trainer.fit(module, datamodule=data)
    seconds = time.monotonic() - start
    out.mkdir(parents=True, exist_ok=True)
    torch.save(module.model.state_dict(), out / f"{name}.pt")
    session = {"meta_steps": trainer.global_step, "wall_seconds": round(seconds, 1), "minutes_budget": args.minutes,
               "seed": args.seed, "resumed": args.resume}  # fmt: skip
    meta = {"method": args.method, "train_shots": args.shots, "tasks_per_batch": TASKS_PER_BATCH,
            "meta_steps": before["meta_steps"] + trainer.global_step,
            "wall_seconds": round(before["wall_seconds"] + seconds, 1),
            "sessions": [*before["sessions"], session]}  # fmt: skip
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta), flush=True)


def test_batches(shots: int, episodes: int, queries: int, seed: int) -> list[Episode]:
    """The fixed test episodes with ``shots`` support points (the same tasks for every method)."""
    data = EpisodicDataModule(
        Sinusoid(), test=Sinusoid(), shots=shots, queries=queries, tasks_per_batch=TASKS_PER_BATCH,
        eval_episodes=episodes, seed=seed,
    )  # fmt: skip
    data.setup("test")
    return list(data.test_dataloader())


def load_mlp(path: Path) -> MLP:
    model = MLP()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def evaluate_learner(learner: MAML, batches: list[Episode], steps: tuple[int, ...]) -> dict[int, Tensor]:
    """Per-task query MSE after each number of inner steps: ``{k: [n_tasks]}``."""
    learner.eval()
    per_task: dict[int, list[Tensor]] = {k: [] for k in steps}
    for batch in batches:
        with torch.enable_grad():
            predictions = learner.predictions_after(batch, steps)
        for k, p in predictions.items():
            per_task[k].append(per_episode_mse(p.detach(), batch.query_y))
    return {k: torch.cat(v) for k, v in per_task.items()}


def summary(values: Tensor) -> dict[str, float]:
    mean, ci95 = mean_and_ci95(values.double())
    return {"mse": round(float(mean), 4), "ci95": round(float(ci95), 4)}


def evaluate(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    work = Path(args.workdir)
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}
    pretrained_name = next(n for n in runs if n.startswith("pretrained"))
    results: dict = {"runs": runs, "test_tasks": args.episodes, "query_points": args.queries, "rows": []}
    examples: dict = {}
    for shots in EVAL_SHOTS:
        batches = test_batches(shots, args.episodes, args.queries, args.seed)
        candidates = {}
        if f"maml_k{shots}" in runs:
            candidates["MAML"] = (f"maml_k{shots}", INNER_LR)
        else:
            print(f"no MAML trained with K={shots} under {work}: its row is left out", flush=True)
        for lr in args.pretrained_lrs:
            candidates[f"pretrained, step {lr:g}"] = (pretrained_name, lr)
        for label, (name, lr) in candidates.items():
            learner = MAML(load_mlp(work / f"{name}.pt"), inner_loop=InnerLoop(lr=lr, steps=1, vectorize="vmap"))
            per_task = evaluate_learner(learner, batches, CURVE_STEPS)
            row = {"K": shots, "method": label, "inner_lr": lr, "checkpoint": name,
                   "train_shots": runs[name]["train_shots"],
                   "meta_steps": runs[name]["meta_steps"], "wall_seconds": runs[name]["wall_seconds"],
                   "curve": {k: summary(v) for k, v in per_task.items()}}  # fmt: skip
            row.update({f"after_{k}": summary(per_task[k]) for k in EVAL_STEPS})
            results["rows"].append(row)
            # the adapted curves of the first test task, for the figure
            task = Episode.stack([next(iter(batches[0]))])
            grid = torch.linspace(-5, 5, 200).view(1, -1, 1)
            dense = Episode(task.support_x, task.support_y, grid, torch.zeros_like(grid), batched=True)
            with torch.enable_grad():
                curves = learner.predictions_after(dense, EVAL_STEPS)
            examples[label, shots] = {
                "truth": fit_truth(task),
                "support": (task.support_x.flatten().tolist(), task.support_y.flatten().tolist()),
                "curves": {k: v.detach().flatten().tolist() for k, v in curves.items()},
            }
        print_table(results["rows"], shots)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        plot(results, examples, Path(args.plot))


def fit_truth(batch: Episode) -> tuple[float, float]:
    """Amplitude and phase of a sinusoid task, recovered from its points (the Episode does not carry them)."""
    x, y = batch.support_x[0].flatten().double(), batch.support_y[0].flatten().double()
    design = torch.stack([torch.sin(x), torch.cos(x)], 1)  # A sin(x - p) = A cos p sin x - A sin p cos x
    a, b = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.flatten().tolist()
    return math.hypot(a, b), math.atan2(-b, a)


def print_table(rows: list[dict], shots: int) -> None:
    for row in rows:
        if row["K"] != shots:
            continue
        cells = "  ".join(
            f"{k} step{'s' if k != 1 else ''}: {row[f'after_{k}']['mse']:.3f} ± {row[f'after_{k}']['ci95']:.3f}"
            for k in EVAL_STEPS
        )
        print(f"K={shots:2d}  {row['method']:34s} {cells}  ({row['meta_steps']} steps)", flush=True)


def plot(results: dict, examples: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(label for label, _ in examples))[:2]  # MAML and the pretrained net at step 0.01
    fig, axes = plt.subplots(3, len(EVAL_SHOTS), figsize=(12, 9.5), dpi=72)
    grid = torch.linspace(-5, 5, 200)
    colours = {0: "#9ecae1", 1: "#4292c6", 10: "#08306b"}
    for row, label in enumerate(labels):
        for col, shots in enumerate(EVAL_SHOTS):
            ax = axes[row, col]
            example = examples[label, shots]
            amplitude, phase = example["truth"]
            ax.plot(grid, amplitude * torch.sin(grid - phase), color="red", lw=1.5, label="ground truth")
            for k, values in example["curves"].items():
                name = "pre-update" if k == 0 else f"{k} step{'s' if k > 1 else ''}"
                ax.plot(grid, values, ls="--", color=colours[k], label=name)
            ax.scatter(*example["support"], marker="^", color="purple", zorder=3, label="support points")
            ax.set_title(f"{label}, K={shots}", fontsize=9)
            ax.set_ylim(-6, 6)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    for col, shots in enumerate(EVAL_SHOTS):
        ax = axes[2, col]
        for row in results["rows"]:
            if row["K"] != shots:
                continue
            steps = sorted(int(k) for k in row["curve"])
            mse = [row["curve"][k]["mse"] for k in steps]
            ci = [row["curve"][k]["ci95"] for k in steps]
            line = ax.plot(steps, mse, marker="o", ms=3, label=row["method"])[0]
            lower = [m - c for m, c in zip(mse, ci, strict=True)]
            upper = [m + c for m, c in zip(mse, ci, strict=True)]
            ax.fill_between(steps, lower, upper, color=line.get_color(), alpha=0.2)
        ax.set_title(f"query MSE vs inner steps, K={shots} ({results['test_tasks']} test tasks)", fontsize=9)
        ax.set_xlabel("inner gradient steps")
        ax.set_yscale("log")
    axes[2, 0].set_ylabel("query MSE (mean, 95% CI)")
    axes[2, 0].legend(fontsize=7)
    fig.suptitle("Sinusoid regression: MAML vs pretrained (Finn et al. 2017, Fig. 2-3), lightning-meta", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("train", help="train one model and save its weights under --workdir")
    fit.add_argument("method", choices=("maml", "pretrained"))
    fit.add_argument("--shots", type=int, default=10, help="K support (and K query) points per training task")
    fit.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget")
    fit.add_argument("--max-steps", type=int, default=PAPER_STEPS, help="in total, sessions included")
    fit.add_argument("--seed", type=int, default=0, help="seed of the training tasks (use a new one with --resume)")
    fit.add_argument("--resume", action="store_true", help="continue from the weights saved under --workdir")
    fit.add_argument("--workdir", default="/tmp/lightning-meta-sinusoid")
    test = commands.add_parser("evaluate", help="evaluate every model of --workdir on the same test tasks")
    test.add_argument("--workdir", default="/tmp/lightning-meta-sinusoid")
    test.add_argument("--episodes", type=int, default=600)
    test.add_argument("--queries", type=int, default=100, help="query points per test task")
    test.add_argument("--pretrained-lrs", type=float, nargs="+", default=[INNER_LR, 0.02])
    test.add_argument("--seed", type=int, default=0)
    test.add_argument("--out", default=None, help="JSON results")
    test.add_argument("--plot", default=None, help="PNG of the adapted curves")
    args = parser.parse_args()
    train(args) if args.command == "train" else evaluate(args)


if __name__ == "__main__":
    main()
