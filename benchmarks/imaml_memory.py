"""Peak memory of one meta-step as the inner steps grow: second-order MAML against implicit MAML (and FOMAML).

MAML differentiates through every inner step, so it keeps every step's graph: its memory grows with the steps.
iMAML (Rajeswaran et al., 2019) runs the inner loop without a graph and differentiates its solution implicitly
(conjugate gradient on Hessian-vector products at the adapted weights), so its memory should not grow.

Each (learner, steps) runs in a *fresh subprocess*: build the learner, one meta-step (``meta_loss``, ``backward``,
an Adam step, as ``training_step`` does), then read the peak resident set ``VmHWM`` from ``/proc/self/status``
(the method of ``benchmarks/maml_throughput.py``: ``getrusage``'s ``ru_maxrss`` would carry the parent's peak
across fork+exec). The table shows the peak, the peak above the process's resident set just before the step
(the step's own memory), and the step's wall time.

Default setting: Conv4-32 on 28x28 one-channel images, 5-way 1-shot, 15 queries per class, meta-batch 4,
``strategy="loop"`` (what ``auto`` picks for convolutions on a CPU: one task's graph at a time), float32, one
thread, inner SGD at 0.1 (iMAML: lambda 1, 5 conjugate-gradient steps).

Run: ``python benchmarks/imaml_memory.py`` (a few minutes on one CPU thread); ``--steps 1 5`` for fewer rows.

Measured 2026-12-01 on the shared 2-core CPU (one thread; peak RSS / the step's own MB, seconds; the process
holds ~795 MB of imports before the step; repeat runs differ by ~10 MB):

    learner                 1 steps                5 steps               20 steps               50 steps
    maml         889 /    95,   1.1     893 /    99,   1.0     954 /   160,   2.8    1079 /   285,   5.7
    imaml        884 /    90,   1.0     881 /    87,   1.1     888 /    94,   1.7     880 /    86,   2.8
    fomaml       874 /    80,   0.5     899 /   105,   0.7     883 /    89,   1.3     879 /    85,   2.9

Second-order MAML's step memory triples from 1 to 50 steps (95 -> 285 MB); iMAML's stays flat (86-94 MB), as
first-order MAML's does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from lightning_meta import InnerLoop


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MB, from ``/proc/self/status``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(learner_name: str, steps: int, tasks: int, threads: int) -> None:
    """In a fresh process: one meta-step of ``learner_name`` with ``steps`` inner steps; print JSON."""
    import gc

    import torch

    from lightning_meta import Episode
    from lightning_meta.learners import IMAML, MAML
    from lightning_meta.models import Conv4

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ways, shots, queries = 5, 1, 15
    model = Conv4(in_channels=1, hidden=32, out_features=ways, image_size=28)
    first_order = learner_name == "fomaml"
    inner_loop = InnerLoop(lr=0.1, steps=steps, vectorize="loop", first_order=first_order)
    if learner_name == "imaml":
        learner = IMAML(model, inner_loop=inner_loop, lam=1.0, cg_steps=5)
    else:
        learner = MAML(model, inner_loop=inner_loop)
    learner.train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(ways)
    episode = Episode(
        torch.randn(tasks, ways * shots, 1, 28, 28, generator=g),
        labels.repeat_interleave(shots).expand(tasks, -1),
        torch.randn(tasks, ways * queries, 1, 28, 28, generator=g),
        labels.repeat_interleave(queries).expand(tasks, -1),
        ways=ways,
        batched=True,
    )
    gc.collect()
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    loss, _ = learner.meta_loss(episode)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_mb": peak, "before_mb": before, "step_mb": peak - before, "seconds": seconds}))


def main() -> None:
    """Run every (learner, steps) in its own subprocess and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 20, 50])
    parser.add_argument("--learners", nargs="+", default=["maml", "imaml", "fomaml"])
    parser.add_argument("--tasks", type=int, default=4, help="meta-batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--_child", nargs=2, metavar=("LEARNER", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        child(args._child[0], int(args._child[1]), args.tasks, args.threads)
        return
    results: dict[tuple[str, int], dict] = {}
    for steps in args.steps:
        for name in args.learners:
            cmd = [sys.executable, os.path.abspath(__file__), "--_child", name, str(steps)]
            cmd += ["--tasks", str(args.tasks), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                print(f"{name} steps={steps}: subprocess failed (rc {proc.returncode}): {proc.stderr[-800:]}")
                continue
            results[(name, steps)] = json.loads(lines[-1])
            r = results[(name, steps)]
            print(f"  {name:7s} steps={steps:3d}: peak {r['peak_mb']:7.0f} MB, step {r['step_mb']:6.0f} MB, "
                  f"{r['seconds']:6.2f} s", flush=True)  # fmt: skip
    print()
    print(f"Conv4-32 28x28, 5-way 1-shot 15 queries, meta-batch {args.tasks}, strategy loop, {args.threads} thread(s)")
    header = f"{'learner':8s} " + " ".join(f"{f'{s} steps':>22s}" for s in args.steps)
    print(header)
    print(f"{'':8s} " + " ".join(f"{'peak / step MB, s':>22s}" for _ in args.steps))
    for name in args.learners:
        cells = []
        for steps in args.steps:
            r = results.get((name, steps))
            cells.append(f"{r['peak_mb']:6.0f} / {r['step_mb']:5.0f}, {r['seconds']:5.1f}" if r else f"{'failed':>22s}")
        print(f"{name:8s} " + " ".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    main()
