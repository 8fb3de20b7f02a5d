"""Reptile on Omniglot 5-way 1-shot with the inner Adam's moments fresh per task or carried over, side by side.

    python benchmarks/reptile_adam_state.py [--steps 400] [--val-every 200] [--val-episodes 100] [--cache-dir DIR]

openai/supervised-reptile adapts each task with one TF ``AdamOptimizer(beta1=0)`` whose moment slots are never
reset: ``train_step`` restores only the trainable variables between tasks (``supervised_reptile/reptile.py``), so
the second moments and the bias-correction powers carry over from task to task and from meta-step to meta-step,
and evaluation starts from the training state (``evaluate`` saves and restores every variable around it). This
package's inner loop is pure: every task starts from fresh moments, so each parameter's first inner step is
``lr * sign(grad)`` whatever the gradient's size.

This script trains Reptile twice with a hand-written loop (``torch.optim.Adam`` on a plain ``Conv4``, no
``lightning_meta`` learner), alike in everything but that: the settings of
``examples/configs/omniglot_5w1s_reptile.yaml`` (10 training images per class, 5 inner steps on mini-batches of 10
cycling in the episode's order, Adam at 0.001 with beta1 = 0, meta-batch 5, outer step 1), the same initial weights
and the same episodes from ``EpisodicDataModule`` (seed 0). Tasks of a meta-batch run one after the other, as in the
reference. ``fresh`` makes a new Adam per task (what the package does); ``carried`` keeps one Adam for the whole run,
and evaluation adapts from a copy of its state. Every ``--val-every`` meta-steps both are validated transductively (50
inner steps on mini-batches of 5, the queries as one batch) on the same fixed validation episodes. Prints and writes
``benchmarks/results/reptile_adam_state.json``. One thread; about 1 s per meta-step and arm.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from reptile_inner_batch import config_settings  # this folder is on sys.path when the script runs
from torch import Tensor, nn

from lightning_meta.data import EpisodicDataModule, Omniglot
from lightning_meta.models import Conv4

ROOT = Path(__file__).resolve().parents[1]
C = config_settings(5)  # omniglot_5w1s_reptile.yaml's inner loop and episode shapes
WAYS, TRAIN_SHOTS, TASKS, INNER_STEPS, INNER_BATCH = C["ways"], C["shots"], C["tasks"], C["steps"], C["batch_size"]
EVAL_STEPS, EVAL_BATCH = C["eval_steps"], C["eval_batch_size"]


def new_adam(model: nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=C["lr"], betas=C["betas"], eps=1e-8)


def adapt(model: nn.Module, opt: torch.optim.Adam, x: Tensor, y: Tensor, steps: int, batch: int) -> None:
    """``steps`` Adam steps on mini-batches at positions ``k*batch ... k*batch+batch-1`` (mod n), in place."""
    n = x.shape[0]
    for k in range(steps):
        idx = torch.arange(k * batch, k * batch + batch) % n
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


def validate(model: nn.Module, theta: dict[str, Tensor], opt_state: dict | None, episodes: list) -> float:
    correct = total = 0
    for batch in episodes:
        for i in range(batch.n_tasks):
            model.load_state_dict(theta)
            opt = new_adam(model)
            if opt_state is not None:
                opt.load_state_dict(copy.deepcopy(opt_state))
            adapt(model, opt, batch.support_x[i], batch.support_y[i], EVAL_STEPS, EVAL_BATCH)
            with torch.no_grad():
                correct += int((model(batch.query_x[i]).argmax(-1) == batch.query_y[i]).sum())
                total += batch.query_y[i].numel()
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--val-every", type=int, default=200)
    parser.add_argument("--val-episodes", type=int, default=100)
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--cache-dir", default=os.environ.get("LIGHTNING_META_CACHE"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reptile_adam_state.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    dm = EpisodicDataModule(
        Omniglot(args.root, "train", cache_dir=args.cache_dir),
        Omniglot(args.root, "val", cache_dir=args.cache_dir),
        ways=WAYS, shots=TRAIN_SHOTS, queries=1, eval_shots=1, eval_queries=15, tasks_per_batch=TASKS,
        eval_tasks_per_batch=20, train_episodes=TASKS * args.steps, eval_episodes=args.val_episodes,
    )  # fmt: skip
    dm.setup("fit")
    val_episodes = list(dm.val_dataloader())
    torch.manual_seed(0)
    model = Conv4(in_channels=1, hidden=64, out_features=WAYS, image_size=28)
    arms = {
        "fresh": {"theta": copy.deepcopy(model.state_dict())},
        "carried": {"theta": copy.deepcopy(model.state_dict())},
    }
    arms["carried"]["opt"] = new_adam(model)
    curves: dict[str, list[list[float]]] = {name: [] for name in arms}
    start = time.perf_counter()
    for step, batch in enumerate(dm.train_dataloader(), start=1):
        for name, arm in arms.items():
            phis = []
            for i in range(batch.n_tasks):
                model.load_state_dict(arm["theta"])
                opt = arm["opt"] if name == "carried" else new_adam(model)
                adapt(model, opt, batch.support_x[i], batch.support_y[i], INNER_STEPS, INNER_BATCH)
                phis.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            arm["theta"] = {k: torch.stack([p[k] for p in phis]).mean(0) for k in arm["theta"]}  # outer step 1
        if step % args.val_every == 0 or step == args.steps:
            figures = {}
            for name, arm in arms.items():
                state = arm["opt"].state_dict() if name == "carried" else None
                acc = validate(model, arm["theta"], state, val_episodes)
                curves[name].append([step, acc])
                figures[name] = f"{100 * acc:.2f} %"
            print(f"step {step} ({time.perf_counter() - start:.0f} s): validation {figures}", flush=True)
            result = {"settings": "omniglot_5w1s_reptile.yaml's, transductive validation", "steps": step,
                      "val_episodes": args.val_episodes, "validation_step_acc": curves}  # fmt: skip
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
