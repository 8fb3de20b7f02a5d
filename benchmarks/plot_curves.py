"""Plot a validation-accuracy curve from Lightning ``CSVLogger`` files, beside the paper's figure.

Reads one or more ``metrics.csv`` files written by ``lightning.pytorch.loggers.CSVLogger`` (several when a run was
resumed into new ``version_*`` folders; rows are merged by step, the later file winning), keeps the rows that carry
``val/acc`` (with ``val/acc_ci95`` when logged), and writes a PNG: mean validation accuracy in % against meta-steps
(the ``step`` column: optimizer steps, i.e. meta-batches), the 95% confidence band, and the paper's test figure as a
dashed line when ``--paper`` is given. The image is small (about 40 KB at the default size), for a README.

Example::

    python benchmarks/plot_curves.py /work/runs/maml5w1s/lightning_logs/version_0/metrics.csv \
        --method MAML --setting "Omniglot 5-way 1-shot" --paper 98.7 --out benchmarks/results/maml_5w1s_curve.png
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

STEP, ACC, CI95 = "step", "val/acc", "val/acc_ci95"


def read_curve(paths: list[Path]) -> list[tuple[int, float, float]]:
    """``(step, accuracy, ci95)`` for every validation row of the files, sorted by step; accuracy as logged (0-1).

    Raises:
        ValueError: if a file has no ``step`` or ``val/acc`` column, or no row with a validation accuracy.
    """
    points: dict[int, tuple[float, float]] = {}
    for path in paths:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in (STEP, ACC) if c not in columns]
            if missing:
                raise ValueError(f"{path}: no {', '.join(missing)} column (columns: {', '.join(columns)}).")
            for row in reader:
                if not row.get(ACC) or not row.get(STEP):
                    continue
                ci95 = float(row[CI95]) if row.get(CI95) else math.nan
                points[int(float(row[STEP]))] = (float(row[ACC]), ci95)
    if not points:
        raise ValueError(f"no row with {ACC} in {', '.join(map(str, paths))}.")
    return [(step, acc, ci) for step, (acc, ci) in sorted(points.items())]


def plot_curve(
    points: list[tuple[int, float, float]],
    out: Path,
    *,
    title: str,
    paper: float | None = None,
    paper_label: str = "paper",
    size: tuple[float, float] = (6.4, 4.0),
    dpi: int = 100,
) -> Path:
    """Write the curve (accuracy in %) with its 95% band and the paper's figure (in %) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p[0] for p in points]
    acc = [100 * p[1] for p in points]
    ci = [100 * p[2] for p in points]
    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    line = ax.plot(steps, acc, marker="o", ms=3, lw=1.5, label="this package (validation)")[0]
    if not all(math.isnan(c) for c in ci):
        lower = [a - (0 if math.isnan(c) else c) for a, c in zip(acc, ci, strict=True)]
        upper = [a + (0 if math.isnan(c) else c) for a, c in zip(acc, ci, strict=True)]
        ax.fill_between(steps, lower, upper, color=line.get_color(), alpha=0.25, lw=0, label="95% CI")
    if paper is not None:
        ax.axhline(paper, color="black", ls="--", lw=1, label=f"{paper_label}: {paper:g} %")
    highest = max([a + (0 if math.isnan(c) else c) for a, c in zip(acc, ci, strict=True)] + [paper or 0.0])
    ax.set_ylim(top=min(100.0, highest + 2.0))  # accuracy stops at 100 %, even where the CI band goes past it
    ax.set_xlabel("meta-steps")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", nargs="+", type=Path, help="CSVLogger metrics.csv file(s) of one run")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--method", required=True, help="e.g. MAML")
    parser.add_argument("--setting", required=True, help='e.g. "Omniglot 5-way 1-shot"')
    parser.add_argument("--paper", type=float, default=None, help="the paper's test accuracy in %% (dashed line)")
    parser.add_argument("--paper-label", default="paper", help='e.g. "Finn et al. 2017 (test)"')
    parser.add_argument("--dpi", type=int, default=100)
    args = parser.parse_args()
    points = read_curve(args.metrics)
    out = plot_curve(
        points,
        args.out,
        title=f"{args.method}, {args.setting}: validation accuracy",
        paper=args.paper,
        paper_label=args.paper_label,
        dpi=args.dpi,
    )
    step, accuracy, _ = points[-1]
    size_kb = out.stat().st_size // 1024
    print(f"{out}: {len(points)} points, the last at step {step}: {100 * accuracy:.2f} % ({size_kb} KB)")


if __name__ == "__main__":
    main()
