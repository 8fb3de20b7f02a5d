"""MAML throughput: this project's MAML (vmap, loop, auto) against learn2learn's and a plain forward+backward floor.

What one *meta-step* is, for every implementation (the same meta-batch, the same network, the same Adam step):

* ``vmap`` / ``loop`` / ``auto``: ``lightning_meta.learners.MAML(..., strategy=...)`` in training mode,
  ``loss, _ = learner.meta_loss(batch)`` (what ``training_step`` runs), ``loss.backward()``, ``Adam.step()``.
  ``loop`` differentiates task by task (one task's graph alive at a time). ``auto`` first runs its trial steps
  (driven through the learner's own ``on_train_batch_start``/``on_train_batch_end`` hooks, as the Trainer would:
  one warm-up and one timed step per strategy) and is then timed in its steady state, on the strategy it chose.
* ``l2l``: ``learn2learn.algorithms.MAML``: per task ``clone()``, ``adapt()`` on the support loss, query loss
  divided by the meta-batch size and ``backward()`` (as learn2learn's examples do), then ``Adam.step()``.
* ``floor``: no adaptation: per task one forward of the support images and one of the query images through the
  same network, ``backward()`` of the sum of their losses, then ``Adam.step()``. Second-order MAML with one inner
  step cannot cost less than this.

Timing: all implementations of a row live in one process and run in alternation, round after round (the order
rotates every round), so machine noise hits them alike. The first rounds are warm-up and are dropped. Reported:
the median seconds per meta-step, tasks/s, and ratios computed *per round* (``a[r] / b[r]``, then the median over
rounds), which cancels slow drifts of the machine's load.

Peak memory: the peak resident set (``VmHWM`` of ``/proc/self/status``) of a *fresh subprocess* per
(row, implementation) that
imports the same modules, builds the same data and model, and runs one meta-step (``auto``: its trial steps, then
one steady step, since a training run pays for the trials too). Reported as the process's peak RSS and as the
increase over its RSS just before the first step ("step peak"). ``tracemalloc`` does not see torch's allocations,
and ``getrusage(RUSAGE_SELF).ru_maxrss`` of a child started from this (large) process reports at least the
parent's peak, as Linux keeps the high-water mark across fork and exec.

Trainer overhead: MAML (``strategy="auto"``) on a sinusoid row through ``Trainer.fit`` (``accelerator="cpu",
logger=False, enable_checkpointing=False, enable_progress_bar=False``), with a callback that stamps every
``on_train_batch_start``; the interval between consecutive stamps is one full Trainer step (data fetch, hooks,
``training_step``, logging, backward, optimizer step). Against it, the bare meta-step of the same learner on the
same episodes in the same process, alternating fits and bare blocks. Startup and ``auto``'s trial steps are
excluded.

Data: random synthetic tensors (images ``randn``, labels ``0..ways-1``; sinusoids from
``lightning_meta.data.sinusoid.Sinusoid``). The speed of these networks does not depend on the pixel values.

Examples::

    python benchmarks/maml_throughput.py --quick                      # smoke run, about 2 minutes
    python benchmarks/maml_throughput.py --json maml_throughput.json  # everything, about 20 minutes on 2 cores
    python benchmarks/maml_throughput.py --rows sine-1 sine-5 trainer --repeats 50
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta import InnerLoop
from lightning_meta.learners.auto_vectorize import AutoVectorize

IMPLS = ("vmap", "loop", "auto", "l2l", "floor", "vmap-compiled", "loop-compiled")
OURS = ("vmap", "loop", "auto", "vmap-compiled", "loop-compiled")


@dataclass(frozen=True)
class Row:
    """One benchmark row: the work of one meta-step."""

    name: str
    title: str
    kind: str  # "conv" or "sine"
    tasks: int  # meta-batch size
    steps: int  # inner steps
    first_order: bool
    inner_lr: float
    ways: int = 5
    shots: int = 1
    queries: int = 15
    in_channels: int = 3
    hidden: int = 32
    image_size: int = 84
    quick_tasks: int = 2  # meta-batch under --quick
    warmup: int = 1
    repeats: int = 3

    @property
    def second_order(self) -> bool:
        return not self.first_order


ROWS: dict[str, Row] = {
    row.name: row
    for row in (
        Row("conv4-2nd-1", "Conv4-32 84px 5w1s q15, T=32, 1 step, 2nd order", "conv", 32, 1, False, 0.01),
        Row("conv4-2nd-5", "Conv4-32 84px 5w1s q15, T=32, 5 steps, 2nd order", "conv", 32, 5, False, 0.01),
        Row("conv4-1st-1", "Conv4-32 84px 5w1s q15, T=32, 1 step, 1st order", "conv", 32, 1, True, 0.01),
        Row("conv4-1st-5", "Conv4-32 84px 5w1s q15, T=32, 5 steps, 1st order", "conv", 32, 5, True, 0.01),
        Row(
            "sine-1",
            "sinusoid MLP 1-40-40-1, T=25, 10+10, 1 step, 2nd order",
            "sine",
            25,
            1,
            False,
            0.01,
            shots=10,
            queries=10,
            quick_tasks=25,
            warmup=3,
            repeats=30,
        ),
        Row(
            "sine-5",
            "sinusoid MLP 1-40-40-1, T=25, 10+10, 5 steps, 2nd order",
            "sine",
            25,
            5,
            False,
            0.01,
            shots=10,
            queries=10,
            quick_tasks=25,
            warmup=3,
            repeats=30,
        ),
        Row(
            "omniglot-20w1s",
            "Conv4-64 28px 20w1s q15, T=16, 1 step, 2nd order",
            "conv",
            16,
            1,
            False,
            0.4,
            ways=20,
            in_channels=1,
            hidden=64,
            image_size=28,
        ),
    )
}


class _SingleProcess:
    """What AutoVectorize needs of a Trainer outside one: a broadcast that returns its argument."""

    class strategy:  # noqa: N801  (mirrors trainer.strategy)
        @staticmethod
        def broadcast(obj: Any, src: int = 0) -> Any:
            return obj


SINGLE_PROCESS = _SingleProcess()


DEFAULT_ROWS = ("sine-1", "sine-5", "trainer", "conv4-2nd-1", "conv4-1st-1", "omniglot-20w1s", "conv4-2nd-5")
ALL_ROWS = (*ROWS, "trainer")


# ------------------------------------------------------------------------------------------------------ the work
def make_batch(row: Row, tasks: int, seed: int = 0) -> Any:
    """A meta-batch of ``tasks`` synthetic tasks for ``row``."""
    from lightning_meta import Episode
    from lightning_meta.data.sinusoid import Sinusoid

    gen = torch.Generator().manual_seed(seed)
    if row.kind == "sine":
        family = Sinusoid()
        return Episode.stack([family.sample(gen, ways=1, shots=row.shots, queries=row.queries) for _ in range(tasks)])
    shape = (row.in_channels, row.image_size, row.image_size)
    n_support, n_query = row.ways * row.shots, row.ways * row.queries
    labels = torch.arange(row.ways)
    return Episode(
        torch.randn(tasks, n_support, *shape, generator=gen),
        labels.repeat_interleave(row.shots).expand(tasks, -1).contiguous(),
        torch.randn(tasks, n_query, *shape, generator=gen),
        labels.repeat_interleave(row.queries).expand(tasks, -1).contiguous(),
        ways=row.ways,
        batched=True,
    )


def make_model(row: Row) -> nn.Module:
    from lightning_meta.models import MLP, Conv4

    torch.manual_seed(0)
    if row.kind == "sine":
        return MLP()
    return Conv4(in_channels=row.in_channels, hidden=row.hidden, out_features=row.ways, image_size=row.image_size)


def loss_fn(row: Row) -> Callable[[Tensor, Tensor], Tensor]:
    return F.mse_loss if row.kind == "sine" else F.cross_entropy


class Impl:
    """One implementation of a meta-step on a fixed meta-batch. ``setup()`` does any warm-up it needs."""

    def __init__(self, name: str, row: Row, model: nn.Module, batch: Any) -> None:
        self.name = name
        self.row = row
        self.batch = batch
        self.info: dict[str, Any] = {}
        self.loss = loss_fn(row)
        if name in OURS:
            from lightning_meta.learners import MAML

            self.learner = MAML(
                copy.deepcopy(model),
                inner_loop=InnerLoop(
                    lr=row.inner_lr,
                    steps=row.steps,
                    first_order=row.first_order,
                    vectorize=name.removesuffix("-compiled"),
                    compiled=name.endswith("-compiled"),
                ),
            )
            self.learner.train()
            params = self.learner.parameters()
        elif name == "l2l":
            import learn2learn as l2l

            self.maml = l2l.algorithms.MAML(copy.deepcopy(model), lr=row.inner_lr, first_order=row.first_order)
            params = self.maml.parameters()
        elif name == "floor":
            self.model = copy.deepcopy(model)
            params = self.model.parameters()
        else:
            raise ValueError(f"unknown implementation {name!r}")
        self.optimizer = torch.optim.Adam(params, lr=1e-3)

    def setup(self) -> None:
        """``auto``: run the trial steps through the learner's hooks until it has chosen a strategy."""
        if self.name != "auto":
            return
        start = time.perf_counter()
        index = 0
        auto = AutoVectorize()
        while self.learner.chosen_vectorize is None:
            auto.on_train_batch_start(SINGLE_PROCESS, self.learner, self.batch, index)  # type: ignore[arg-type]
            self.step()
            auto.on_train_batch_end(SINGLE_PROCESS, self.learner, None, self.batch, index)  # type: ignore[arg-type]
            index += 1
        self.info = {
            "chosen": self.learner.chosen_vectorize,
            "trial_steps": index,
            "trial_seconds": time.perf_counter() - start,
            "trial_times": {k: list(v) for k, v in auto.times.items()},
        }

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.name in OURS:
            loss, _ = self.learner.meta_loss(self.batch)
            loss.backward()
        elif self.name == "l2l":
            self._l2l_step()
        else:
            self._floor_step()
        self.optimizer.step()

    def _l2l_step(self) -> None:
        b, n = self.batch, self.batch.n_tasks
        for t in range(n):
            learner = self.maml.clone()
            for _ in range(self.row.steps):
                learner.adapt(self.loss(learner(b.support_x[t]), b.support_y[t]))
            (self.loss(learner(b.query_x[t]), b.query_y[t]) / n).backward()

    def _floor_step(self) -> None:
        b, n = self.batch, self.batch.n_tasks
        for t in range(n):
            support = self.loss(self.model(b.support_x[t]), b.support_y[t])
            query = self.loss(self.model(b.query_x[t]), b.query_y[t])
            ((support + query) / n).backward()


# ------------------------------------------------------------------------------------------------------ timing
def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of the per-round ratio a[r] / b[r]."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def row_tasks(row: Row, quick: bool, conv_tasks: int | None) -> int:
    """Meta-batch size of ``row`` in this run."""
    if conv_tasks is not None and row.kind == "conv":
        return conv_tasks
    return row.quick_tasks if quick else row.tasks


def time_row(
    row: Row,
    impls: tuple[str, ...],
    quick: bool,
    repeats: int | None,
    conv_tasks: int | None,
    log: Callable[[str], None],
) -> dict:
    tasks = row_tasks(row, quick, conv_tasks)
    warmup = 1 if quick else row.warmup
    timed = (
        repeats
        if repeats is not None
        else (min(row.repeats, 2 if row.kind == "conv" else 10) if quick else row.repeats)
    )
    row = replace(row, tasks=tasks)
    batch = make_batch(row, tasks)
    model = make_model(row)
    runners = []
    for name in impls:
        impl = Impl(name, row, model, batch)
        t0 = time.perf_counter()
        impl.setup()
        if name.endswith("-compiled"):  # compile outside the timed rounds
            impl.step()
            log(f"  {row.name}: {name} compiled in {time.perf_counter() - t0:.1f} s")
        if impl.info:
            log(
                f"  {row.name}: auto chose {impl.info['chosen']!r} after {impl.info['trial_steps']} trial steps "
                f"({time.perf_counter() - t0:.1f} s; trial times "
                + ", ".join(f"{k} {[round(x, 4) for x in v]}" for k, v in impl.info["trial_times"].items())
                + ")"
            )
        runners.append(impl)
    times: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(warmup + timed):
        shift = r % len(runners)
        for impl in runners[shift:] + runners[:shift]:
            t0 = time.perf_counter()
            impl.step()
            elapsed = time.perf_counter() - t0
            if r >= warmup:
                times[impl.name].append(elapsed)
        if row.kind == "conv" or r == warmup + timed - 1:
            done = ", ".join(f"{n} {times[n][-1]:.3f}" for n in impls if times[n])
            log(f"  {row.name}: round {r + 1}/{warmup + timed}{' (warm-up)' if r < warmup else ''}: {done}")
    info = {impl.name: impl.info for impl in runners if impl.info}
    del runners
    gc.collect()
    return {"row": asdict(row), "times": times, "auto": info.get("auto", {})}


# ------------------------------------------------------------------------------------------------------ memory
def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MB, from ``/proc/self/status``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(row_name: str, impl_name: str, quick: bool, threads: int, conv_tasks: int | None) -> None:
    """Run in a fresh process: one meta-step (auto: trials + one), print peak RSS as JSON."""
    torch.set_num_threads(threads)
    import learn2learn  # noqa: F401  (same imports in every child, so the baselines match)

    import lightning_meta.learners  # noqa: F401

    row = ROWS[row_name]
    row = replace(row, tasks=row_tasks(row, quick, conv_tasks))
    impl = Impl(impl_name, row, make_model(row), make_batch(row, row.tasks))
    gc.collect()
    before = _status_mb("VmRSS")
    impl.setup()
    impl.step()
    # VmHWM is the peak RSS of this process image. getrusage's ru_maxrss is NOT usable here: Linux carries the
    # high-water mark across fork+exec (signal_struct.maxrss), so a child reports at least its parent's peak.
    peak = _status_mb("VmHWM")
    rusage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        json.dumps(
            {"peak_mb": peak, "before_mb": before, "step_peak_mb": peak - before, "ru_maxrss_mb": rusage, **impl.info}
        )
    )


def measure_memory(
    row: Row, impls: tuple[str, ...], quick: bool, threads: int, conv_tasks: int | None, log: Callable[[str], None]
) -> dict:
    result = {}
    for name in impls:
        cmd = [sys.executable, os.path.abspath(__file__), "--_memory", row.name, name, "--threads", str(threads)]
        if quick:
            cmd.append("--quick")
        if conv_tasks is not None:
            cmd += ["--conv-tasks", str(conv_tasks)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            log(f"  {row.name}/{name}: memory subprocess failed (rc {proc.returncode}): {proc.stderr[-500:]}")
            continue
        result[name] = json.loads(lines[-1])
        log(
            f"  {row.name}/{name}: peak RSS {result[name]['peak_mb']:.0f} MB "
            f"(step peak {result[name]['step_peak_mb']:.0f} MB)"
        )
    return result


# ------------------------------------------------------------------------------------------------------ trainer
def measure_trainer(row: Row, rounds: int, steps: int, log: Callable[[str], None]) -> dict:
    """Full ``Trainer.fit`` step against the bare meta-step, same learner, same episodes, alternating."""
    import lightning as L
    from torch.utils.data import DataLoader, Dataset

    from lightning_meta import Episode
    from lightning_meta.data.sinusoid import Sinusoid
    from lightning_meta.learners import MAML
    from lightning_meta.models import MLP

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LightningModule.*has parameters that were not used.*")
    gen = torch.Generator().manual_seed(1)
    family = Sinusoid()
    episodes = [
        Episode.stack([family.sample(gen, ways=1, shots=row.shots, queries=row.queries) for _ in range(row.tasks)])
        for _ in range(16)
    ]

    class Episodes(Dataset):
        def __len__(self) -> int:
            return steps

        def __getitem__(self, i: int) -> Any:
            return episodes[i % len(episodes)]

    torch.manual_seed(0)
    learner = MAML(
        MLP(), inner_loop=InnerLoop(lr=row.inner_lr, steps=row.steps, first_order=row.first_order, vectorize="auto")
    )
    bare_optimizer = torch.optim.Adam(learner.parameters(), lr=learner.lr)

    def bare_step(episode: Any) -> float:
        """What training_step + backward + optimizer step cost without the Trainer (grads cleared after)."""
        t0 = time.perf_counter()
        bare_optimizer.zero_grad(set_to_none=True)
        loss, _ = learner.meta_loss(episode)
        loss.backward()
        bare_optimizer.step()
        elapsed = time.perf_counter() - t0
        bare_optimizer.zero_grad(set_to_none=True)
        return elapsed

    class Interleave(L.Callback):
        """At every batch start: close the previous Trainer step's interval, run one bare step, restart the clock.

        The interval from the restart to the next batch start is one full Trainer step (training_step, backward,
        optimizer step, logging, batch-end hooks, fetching and moving the next batch, batch-start hooks), and each
        is paired with a bare step run right next to it, so load bursts hit both alike.
        """

        def __init__(self) -> None:
            self.stamp: float | None = None
            self.pairs: list[tuple[float, float]] = []
            self.pending: float | None = None

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            now = time.perf_counter()
            if self.stamp is not None and self.pending is not None and pl_module.chosen_vectorize is not None:
                self.pairs.append((now - self.stamp, self.pending))
            self.pending = bare_step(batch) if pl_module.chosen_vectorize is not None else None
            self.stamp = time.perf_counter()

    pairs: list[tuple[float, float]] = []
    fit_walls: list[float] = []
    skip = 2  # first pairs of every fit
    for r in range(rounds):
        clock = Interleave()
        trainer = L.Trainer(
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            max_epochs=1,
            callbacks=[clock],
        )
        t0 = time.perf_counter()
        trainer.fit(learner, train_dataloaders=DataLoader(Episodes(), batch_size=None))
        fit_walls.append(time.perf_counter() - t0)
        pairs += clock.pairs[skip:]
        fits, bares = zip(*clock.pairs[skip:], strict=True)
        log(
            f"  trainer: round {r + 1}/{rounds}: fit {statistics.median(fits) * 1e3:.2f} ms/step, "
            f"bare {statistics.median(bares) * 1e3:.2f} ms/step, paired ratio "
            f"{statistics.median(f / b for f, b in clock.pairs[skip:]):.3f} (auto chose {learner.chosen_vectorize!r})"
        )
    trainer_steps = [f for f, _ in pairs]
    bare_steps = [b for _, b in pairs]
    fit_median, bare_median = statistics.median(trainer_steps), statistics.median(bare_steps)
    fit_mean, bare_mean = statistics.fmean(trainer_steps), statistics.fmean(bare_steps)
    return {
        "row": row.name,
        "strategy": learner.chosen_vectorize,
        "steps_per_fit": steps,
        "rounds": rounds,
        "fit_step_median_s": fit_median,
        "bare_step_median_s": bare_median,
        "fit_step_mean_s": fit_mean,
        "bare_step_mean_s": bare_mean,
        "overhead_median": fit_median / bare_median - 1,
        "overhead_paired_median": statistics.median(f / b for f, b in pairs) - 1,
        "pairs": len(pairs),
        "overhead_mean": fit_mean / bare_mean - 1,
        "overhead_ms_per_step": (fit_median - bare_median) * 1e3,
        "fit_wall_s": fit_walls,
    }


# ------------------------------------------------------------------------------------------------------ report
def summarize(result: dict) -> dict:
    """Medians and the issue's ratios for one timed row."""
    times, row = result["times"], result["row"]
    summary: dict[str, Any] = {"median_s": {}, "tasks_per_s": {}, "ratios": {}}
    for name, ts in times.items():
        summary["median_s"][name] = statistics.median(ts)
        summary["tasks_per_s"][name] = row["tasks"] / statistics.median(ts)
    contenders = [n for n in ("l2l", "vmap", "loop") if n in times]
    if "auto" in times and contenders:
        fastest = [min(times[n][r] for n in contenders) for r in range(len(times["auto"]))]
        summary["ratios"]["auto_vs_fastest"] = median_ratio(times["auto"], fastest)
        summary["fastest_other"] = min(contenders, key=lambda n: summary["median_s"][n])
    for name in ("vmap", "loop"):
        if name in times and f"{name}-compiled" in times:
            summary["ratios"][f"{name}_over_{name}-compiled"] = median_ratio(times[name], times[f"{name}-compiled"])
    if "l2l" in times:
        for name in OURS:
            if name in times:
                summary["ratios"][f"l2l_over_{name}"] = median_ratio(times["l2l"], times[name])
    if "floor" in times:
        for name in (*OURS, "l2l"):
            if name in times:
                summary["ratios"][f"{name}_over_floor"] = median_ratio(times[name], times["floor"])
    return summary


def print_report(results: list[dict], memory: dict, trainer: dict | None, meta: dict) -> list[dict]:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    table = Table(
        title=f"MAML meta-step, median of alternated rounds ({meta['threads']} threads"
        + (", --quick" if meta["quick"] else "")
        + ")"
    )
    for col, justify in (
        ("row", "left"),
        ("impl", "left"),
        ("s/step", "right"),
        ("tasks/s", "right"),
        ("x floor", "right"),
        ("l2l / this", "right"),
        ("peak RSS MB", "right"),
        ("step peak MB", "right"),
        ("rounds", "right"),
    ):
        table.add_column(col, justify=justify)
    for result in results:
        name = result["row"]["name"]
        s = result["summary"]
        mem = memory.get(name, {})
        for i, impl in enumerate(result["times"]):
            label = impl + (f" -> {result['auto'].get('chosen')}" if impl == "auto" and result["auto"] else "")
            over_floor = s["ratios"].get(f"{impl}_over_floor")
            l2l_over = s["ratios"].get(f"l2l_over_{impl}")
            m = mem.get(impl)
            table.add_row(
                f"{name} (T={result['row']['tasks']})" if i == 0 else "",
                label,
                f"{s['median_s'][impl]:.4f}",
                f"{s['tasks_per_s'][impl]:.1f}",
                "" if over_floor is None else f"{over_floor:.2f}",
                "" if l2l_over is None else f"{l2l_over:.2f}",
                "" if m is None else f"{m['peak_mb']:.0f}",
                "" if m is None else f"{m['step_peak_mb']:.0f}",
                str(len(result["times"][impl])),
            )
        table.add_section()
    console.print(table)

    goals: list[dict] = []
    for result in results:
        name, row, s = result["row"]["name"], result["row"], result["summary"]
        r = s["ratios"]
        if "auto_vs_fastest" in r:
            goals.append(
                {
                    "goal": "auto <= fastest of l2l/vmap/loop",
                    "row": name,
                    "value": r["auto_vs_fastest"],
                    "target": 1.0,
                    "met": r["auto_vs_fastest"] <= 1.05,
                    "note": f"chose {result['auto'].get('chosen')}; fastest other {s['fastest_other']} "
                    "(<=1.05 counted as noise)",
                }
            )
        if row["kind"] == "sine" and "l2l_over_auto" in r:
            goals.append(
                {
                    "goal": ">= 8x learn2learn (sinusoid)",
                    "row": name,
                    "value": r["l2l_over_auto"],
                    "target": 8.0,
                    "met": r["l2l_over_auto"] >= 8.0,
                    "note": "l2l s/step over auto s/step",
                }
            )
        if row["kind"] == "conv" and not row["first_order"] and "auto_over_floor" in r:
            goals.append(
                {
                    "goal": "2nd-order Conv4 <= 1.25x floor",
                    "row": name,
                    "value": r["auto_over_floor"],
                    "target": 1.25,
                    "met": r["auto_over_floor"] <= 1.25,
                    "note": f"auto over floor (l2l over floor {r.get('l2l_over_floor', float('nan')):.2f}; "
                    f"{row['steps']} inner step(s))",
                }
            )
        mem = memory.get(name, {})
        if "auto" in mem and "l2l" in mem:
            ratio = mem["auto"]["step_peak_mb"] / mem["l2l"]["step_peak_mb"]
            goals.append(
                {
                    "goal": "peak memory <= learn2learn",
                    "row": name,
                    "value": ratio,
                    "target": 1.0,
                    "met": ratio <= 1.0,
                    "note": f"step peak auto {mem['auto']['step_peak_mb']:.0f} MB / "
                    f"l2l {mem['l2l']['step_peak_mb']:.0f} MB; "
                    f"process peak {mem['auto']['peak_mb']:.0f} / {mem['l2l']['peak_mb']:.0f} MB",
                }
            )
    if trainer:
        goals.append(
            {
                "goal": "Trainer overhead < 5%",
                "row": trainer["row"],
                "value": trainer["overhead_paired_median"],
                "target": 0.05,
                "met": trainer["overhead_paired_median"] < 0.05,
                "note": f"median of {trainer['pairs']} paired steps; "
                f"fit {trainer['fit_step_median_s'] * 1e3:.2f} ms vs bare "
                f"{trainer['bare_step_median_s'] * 1e3:.2f} ms per step (+{trainer['overhead_ms_per_step']:.2f} ms; "
                f"ratio of means: {100 * trainer['overhead_mean']:+.1f}%), "
                f"strategy {trainer['strategy']}",
            }
        )
    gtable = Table(title="Goals (issue 3), each a ratio within this run")
    for col in ("goal", "row", "value", "target", "met", "note"):
        gtable.add_column(col, justify="right" if col in ("value", "target") else "left")
    for g in goals:
        pct = g["goal"].startswith("Trainer")
        gtable.add_row(
            g["goal"],
            g["row"],
            f"{100 * g['value']:+.1f}%" if pct else f"{g['value']:.2f}",
            f"{100 * g['target']:.0f}%" if pct else f"{g['target']:.2f}",
            "[green]yes[/]" if g["met"] else "[red]NO[/]",
            g["note"],
        )
    console.print(gtable)
    return goals


# ------------------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=ALL_ROWS,
        default=list(DEFAULT_ROWS),
        metavar="ROW",
        help=f"rows to run, in order (default: {' '.join(DEFAULT_ROWS)}; all: {' '.join(ALL_ROWS)})",
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=IMPLS,
        default=list(IMPLS[:5]),
        help="implementations to time (default: all but the compiled ones)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds per row after the warm-up (default: 3 for Conv4 rows, 30 for sinusoids)",
    )
    parser.add_argument(
        "--conv-tasks",
        type=int,
        default=None,
        metavar="T",
        help="meta-batch size of the Conv4 rows (default: the issue's 32 and 16; 2 with --quick)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: meta-batch 2 on Conv4 rows, few rounds, short Trainer fits, no memory",
    )
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure peak RSS in a subprocess per (row, implementation) (default: on, off with --quick)",
    )
    parser.add_argument(
        "--memory-impls",
        nargs="+",
        choices=IMPLS,
        default=None,
        help="implementations to measure memory for (default: those timed); auto's subprocess runs its "
        "trial steps, vmap included, so its peak is at least vmap's",
    )
    parser.add_argument(
        "--trainer-row",
        choices=("sine-1", "sine-5"),
        default="sine-1",
        help="the sinusoid row whose step the Trainer overhead is measured on (default sine-1, the cheapest)",
    )
    parser.add_argument("--trainer-steps", type=int, default=None, help="steps per Trainer.fit (default 300; quick 40)")
    parser.add_argument("--trainer-rounds", type=int, default=None, help="alternated fits (default 3; quick 2)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write all figures to this JSON file")
    parser.add_argument(
        "--report",
        default=None,
        metavar="PATH",
        help="print the tables of a JSON written by --json (also a partial one from a cut-short run)",
    )
    parser.add_argument("--_memory", nargs=2, metavar=("ROW", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args._memory:
        memory_child(*args._memory, quick=args.quick, threads=args.threads, conv_tasks=args.conv_tasks)
        return
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        print_report(saved["rows"], saved.get("memory", {}), saved.get("trainer"), saved["meta"])
        return
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    memory_on = (not args.quick) if args.memory is None else args.memory

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    load = os.getloadavg()
    meta = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "threads": args.threads,
        "quick": args.quick,
        "conv_tasks": args.conv_tasks,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": load,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "data": "random synthetic tensors (randn images, labels 0..ways-1; Sinusoid tasks)",
    }
    try:
        import learn2learn

        meta["learn2learn"] = learn2learn.__version__
    except ImportError:
        if "l2l" in args.impls:
            parser.error("learn2learn is not installed (scripts/install_learn2learn.sh); or pass --impls without l2l")
    log(
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; torch {torch.__version__}, "
        f"{args.threads} threads"
    )
    impls = tuple(args.impls)
    results, memory, trainer = [], {}, None
    for name in args.rows:
        if name == "trainer":
            log(f"trainer: Trainer.fit step against the bare step ({args.trainer_row})")
            trainer = measure_trainer(
                ROWS[args.trainer_row],
                rounds=args.trainer_rounds or (2 if args.quick else 3),
                steps=args.trainer_steps or (40 if args.quick else 300),
                log=log,
            )
            continue
        row = ROWS[name]
        log(f"{name}: {row.title} (this run: meta-batch {row_tasks(row, args.quick, args.conv_tasks)})")
        result = time_row(row, impls, args.quick, args.repeats, args.conv_tasks, log)
        result["summary"] = summarize(result)
        results.append(result)
        if memory_on:
            memory[name] = measure_memory(
                row, tuple(args.memory_impls or impls), args.quick, args.threads, args.conv_tasks, log
            )
        if args.json:  # partial results, in case the run is cut short
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "rows": results, "memory": memory, "trainer": trainer, "partial": True}, f)
    meta["loadavg_end"] = os.getloadavg()
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    goals = print_report(results, memory, trainer, meta)
    log("load average at the end " + " ".join(f"{x:.2f}" for x in meta["loadavg_end"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"meta": meta, "rows": results, "memory": memory, "trainer": trainer, "goals": goals}, f, indent=1
            )
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
