"""Plot a meta-RL run's validation return before and after adaptation against meta-steps (CSVLogger files).

Reads one or more ``metrics.csv`` files written by ``lightning.pytorch.loggers.CSVLogger`` for a
``MAMLPolicyGradient`` run (several when a run was resumed into new ``version_*`` folders; rows are merged by step,
the later file winning) and draws ``val/return_{k}_steps`` (the mean return on the fixed validation tasks before
adaptation, k = 0, and after k inner policy-gradient steps) against the ``step`` column (meta-steps), with the
training meta-batches' own ``train/return_{k}_steps`` as a faint moving average. The PNG is small, for a README.

Example::

    python benchmarks/plot_halfcheetah_returns.py /work/runs/halfcheetah_vel/csv/version_0/metrics.csv \
        --setting "HalfCheetah velocity in [0, 2], 40 tasks x 20 episodes" \
        --out benchmarks/results/halfcheetah_vel_returns.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

STEP = "step"


def read_returns(paths: list[Path], prefix: str, steps: tuple[int, ...]) -> dict[int, list[tuple[int, float]]]:
    """``{k: [(meta-step, return), ...]}`` of the ``{prefix}/return_{k}_steps`` columns, sorted by meta-step.

    Raises:
        ValueError: if no file has a ``step`` column.
    """
    points: dict[int, dict[int, float]] = {k: {} for k in steps}
    for path in paths:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if STEP not in (reader.fieldnames or []):
                raise ValueError(f"{path}: no {STEP} column (columns: {', '.join(reader.fieldnames or [])}).")
            for row in reader:
                for k in steps:
                    value = row.get(f"{prefix}/return_{k}_steps")
                    if value and row.get(STEP):
                        points[k][int(float(row[STEP]))] = float(value)
    return {k: sorted(curve.items()) for k, curve in points.items() if curve}


def moving_average(points: list[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    """The trailing mean over ``window`` points (fewer at the start)."""
    values = [v for _, v in points]
    means = [sum(values[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(values))]
    return [(step, mean) for (step, _), mean in zip(points, means, strict=True)]


def plot_returns(
    validation: dict[int, list[tuple[int, float]]],
    training: dict[int, list[tuple[int, float]]],
    out: Path,
    *,
    title: str,
    window: int = 10,
    size: tuple[float, float] = (6.4, 4.0),
    dpi: int = 100,
) -> Path:
    """Write the validation curves (markers) and the training curves' moving averages (faint) to ``out``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for k, points in training.items():
        smooth = moving_average(points, window)
        label = f"training meta-batches, {'before adaptation' if k == 0 else f'after {k} step'} ({window}-step mean)"
        ax.plot([s for s, _ in smooth], [v for _, v in smooth], color=f"C{k}", alpha=0.35, lw=1, label=label)
    for k, points in validation.items():
        label = "validation tasks, before adaptation" if k == 0 else f"validation tasks, after {k} step{'s' * (k > 1)}"
        ax.plot([s for s, _ in points], [v for _, v in points], color=f"C{k}", marker="o", ms=4, lw=1.8, label=label)
    ax.set_xlabel("meta-steps")
    ax.set_ylabel("mean return (200-step episodes)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", nargs="+", type=Path, help="CSVLogger metrics.csv file(s) of one run")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--setting", required=True, help='e.g. "HalfCheetah velocity in [0, 2]"')
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 1], help="numbers of inner steps to draw")
    parser.add_argument("--window", type=int, default=10, help="moving-average window of the training curves")
    parser.add_argument("--dpi", type=int, default=100)
    args = parser.parse_args()
    steps = tuple(args.steps)
    validation = read_returns(args.metrics, "val", steps)
    if not validation:
        raise SystemExit(f"no val/return_k_steps rows for k in {steps} in {', '.join(map(str, args.metrics))}")
    training = read_returns(args.metrics, "train", steps)
    out = plot_returns(
        validation, training, args.out, title=f"MAML-RL, {args.setting}", window=args.window, dpi=args.dpi
    )
    for k, points in validation.items():
        print(f"val/return_{k}_steps: " + ", ".join(f"step {s}: {v:.1f}" for s, v in points))
    print(f"{out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
