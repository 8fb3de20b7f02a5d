"""Per-task returns of a MAML-RL checkpoint before and after 1..k steps, with 95% intervals of the gains (paired).

``lightning-meta test`` prints the mean return on the fixed test tasks before and after each number of inner steps;
whether the gain after one step is more than noise needs the per-task values: the gain is paired (the same task,
its return after k steps minus before), so its interval is much narrower than the two means' intervals. This script
evaluates the checkpoint on the same fixed tasks as ``trainer.test`` (``TaskDataModule`` with the config's family and
seed) through ``MAMLPolicyGradient.returns_after`` and prints, for each k, the mean return, its 95% interval over the
tasks, and the paired gain over k = 0 with its 95% interval. (For untrained weights, use
``lightning-meta validate --config ... --untrained true``.)

Example::

    python benchmarks/halfcheetah_vel_paired_returns.py /work/runs/halfcheetah_vel/checkpoints/last.ckpt \
        --stage test --tasks 40
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lightning_meta.metrics import mean_and_ci95
from lightning_meta.rl import HalfCheetahVelocity, MAMLPolicyGradient, TaskDataModule


def per_task_returns(learner: MAMLPolicyGradient, datamodule: TaskDataModule, stage: str, steps: int) -> torch.Tensor:
    """``[steps + 1, tasks]``: each fixed task's mean return after ``0 .. steps`` inner steps."""
    datamodule.setup("test" if stage == "test" else "validate")
    loader = datamodule.test_dataloader() if stage == "test" else datamodule.val_dataloader()
    return torch.cat([learner.returns_after(batch, steps) for batch in loader], dim=1).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a MAMLPolicyGradient checkpoint (e.g. last.ckpt)")
    parser.add_argument("--stage", choices=["val", "test"], default="test", help="which fixed tasks")
    parser.add_argument("--tasks", type=int, default=40, help="fixed tasks (the config's eval_tasks)")
    parser.add_argument("--steps", type=int, default=3, help="most inner steps")
    parser.add_argument("--seed", type=int, default=0, help="the datamodule's seed (the config's)")
    parser.add_argument("--velocity", type=float, nargs=2, default=[0.0, 2.0], help="target velocity range")
    parser.add_argument("--horizon", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)

    learner = MAMLPolicyGradient.load_from_checkpoint(args.checkpoint, weights_only=True, map_location="cpu")
    step = torch.load(args.checkpoint, weights_only=True, map_location="cpu")["global_step"]
    learner.eval()
    family = HalfCheetahVelocity(velocity=tuple(args.velocity), horizon=args.horizon)
    datamodule = TaskDataModule(family, tasks_per_batch=args.tasks, eval_tasks=args.tasks, seed=args.seed)
    start = time.perf_counter()
    curve = per_task_returns(learner, datamodule, args.stage, args.steps)
    seconds = time.perf_counter() - start
    episodes = learner.trajectories_per_task
    print(f"{args.checkpoint} (meta-step {step}): {curve.shape[1]} fixed {args.stage} tasks, {episodes} episodes per "
          f"task and step, evaluated in {seconds:.0f} s")  # fmt: skip
    print(f"{'steps':>5}  {'mean return':>12}  {'95% CI':>8}  {'gain over 0 steps (paired)':>28}")
    for k in range(curve.shape[0]):
        mean, half = mean_and_ci95(curve[k])
        gain = ""
        if k:
            gain_mean, gain_half = mean_and_ci95(curve[k] - curve[0])
            gain = f"{float(gain_mean):+.2f} +- {float(gain_half):.2f}"
        print(f"{k:>5}  {float(mean):>12.2f}  {float(half):>8.2f}  {gain:>28}")


if __name__ == "__main__":
    main()
