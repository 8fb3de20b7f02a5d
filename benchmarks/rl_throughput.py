"""Meta-RL speed on 2D navigation: rollout collection, and MAML meta-steps against a learn2learn-style loop.

``python benchmarks/rl_throughput.py [--tasks 20] [--trajectories 20] [--steps 3]`` prints, in one run:

1. Environment steps per second of rollout collection (``lightning_meta.rl.collect``, all tasks at once, one
   batched policy forward per time step) with the NumPy vector environment (``Navigation2DVectorEnv``) and with
   Gymnasium's ``SyncVectorEnv`` of ``Navigation2DEnv`` (one environment at a time inside), and a plain loop of one
   environment and one policy forward per step, as per-episode samplers do.
2. Second-order MAML meta-steps per second (collect, adapt, collect again, outer loss, backward, Adam step):
   ``MAMLPolicyGradient.training_loss`` against the per-task loop of learn2learn's ``examples/rl/maml_trpo.py``
   (``MAML(policy).clone()`` and ``.adapt()`` per task, each task's rollouts on their own), on the same policy,
   tasks, trajectories (the same seeds give the same episodes), batch sizes and the same vector environment class.
   The two meta-gradients are compared first.

One torch thread (small networks are per-operation bound). Timings are the median of ``--steps`` repetitions
(the two meta-step loops alternate).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lightning_meta.rl import GaussianMLPPolicy, MAMLPolicyGradient, Navigation2D, Navigation2DEnv, TaskDataModule
from lightning_meta.rl.rollout import Trajectories, collect, rollout_generators


def median_time(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_env_at_a_time(policy: GaussianMLPPolicy, goals: torch.Tensor, copies: int, horizon: int) -> int:
    """Every episode on its own: one environment, one policy forward per step."""
    steps = 0
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for goal in goals:
            for _ in range(copies):
                env = Navigation2DEnv(goal=tuple(goal.tolist()))
                obs, _ = env.reset(seed=0)
                for _ in range(horizon):
                    out = policy(torch.as_tensor(obs).unsqueeze(0))
                    action = policy.sample(out, policy.draw_noise(generator, (1,)))
                    obs, *_ = env.step(action[0].numpy())
                    steps += 1
    return steps


def learn2learn_meta_loss(learner: MAMLPolicyGradient, maml: torch.nn.Module, batch) -> float:  # type: ignore[no-untyped-def]
    """learn2learn's MAML-RL loop: per task, clone, roll out, adapt, roll out again, backward the task's loss."""
    family, copies = batch.family, learner.trajectories_per_task
    envs = family.make_vector_env(copies)
    total = 0.0
    for i in range(batch.n_tasks):
        family.set_tasks(envs, {k: v[i : i + 1].repeat_interleave(copies, 0) for k, v in batch.params.items()})
        clone = maml.clone()  # type: ignore[operator]
        params = dict(clone.module.named_parameters())
        seeds = batch.seeds[i : i + 1]
        before = collect(learner.policy, params, envs, generators=rollout_generators(seeds, 0), copies=copies,
                         horizon=family.horizon)  # fmt: skip
        x = before.observations.flatten(1, 2)[0]
        advantages = learner.advantages(before).flatten(1, 2)[0]
        actions, mask = before.actions.flatten(1, 2)[0], before.mask.flatten(1, 2)[0]
        log_probs = learner.policy.log_prob(clone(x), actions)  # type: ignore[operator]
        clone.adapt(-(log_probs * advantages * mask).sum() / mask.sum())
        adapted = dict(clone.module.named_parameters())
        after = collect(learner.policy, adapted, envs, generators=rollout_generators(seeds, 1), copies=copies,
                        horizon=family.horizon)  # fmt: skip
        loss = learner.outer_losses(adapted, after)[0] / batch.n_tasks
        loss.backward()
        total += float(loss.detach())
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    horizon = 100
    dm = TaskDataModule(Navigation2D(horizon=horizon), tasks_per_batch=args.tasks, train_tasks=args.tasks)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(observation_size=2, action_size=2, hidden=[64, 64])
    learner = MAMLPolicyGradient(policy, inner_lr=0.1, trajectories_per_task=args.trajectories)
    params = dict(policy.named_parameters())
    n_steps = args.tasks * args.trajectories * horizon

    print(f"2D navigation: {args.tasks} tasks x {args.trajectories} trajectories x {horizon} steps, MLP 64-64")
    rates = {}
    for name, family in (("vectorised (NumPy VectorEnv)", Navigation2D(horizon=horizon)),
                         ("Gymnasium SyncVectorEnv", Navigation2D(horizon=horizon, vectorized=False))):  # fmt: skip
        envs = family.make_vector_env(args.tasks * args.trajectories)
        family.set_tasks(envs, {k: v.repeat_interleave(args.trajectories, 0) for k, v in batch.params.items()})

        def run(envs=envs) -> Trajectories:  # type: ignore[no-untyped-def]
            return collect(policy, params, envs, generators=rollout_generators(batch.seeds, 0),
                           copies=args.trajectories, horizon=horizon)  # fmt: skip

        rates[name] = n_steps / median_time(run, args.steps)
    single_steps = one_env_at_a_time(policy, batch.params["goal"][:2], 2, horizon)
    rates["one env + one forward per step"] = single_steps / median_time(
        lambda: one_env_at_a_time(policy, batch.params["goal"][:2], 2, horizon), args.steps
    )
    for name, rate in rates.items():
        print(f"  collection, {name:32s} {rate:12,.0f} env steps/s")
    base = rates["one env + one forward per step"]
    print(f"  ratio vectorised / one-at-a-time: {rates['vectorised (NumPy VectorEnv)'] / base:.1f}x; "
          f"SyncVectorEnv / one-at-a-time: {rates['Gymnasium SyncVectorEnv'] / base:.1f}x")  # fmt: skip

    import learn2learn as l2l

    maml = l2l.algorithms.MAML(policy, lr=learner.inner_lr, first_order=False)
    policy.zero_grad()
    learner.training_loss(batch)[0].backward()
    ours = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    learn2learn_meta_loss(learner, maml, batch)
    theirs = [p.grad.clone() for p in policy.parameters()]
    error = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(ours, theirs, strict=True))
    print(f"meta-gradient, ours vs learn2learn loop: max relative difference {error:.1e}")

    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)

    def ours_step() -> None:
        optimizer.zero_grad()
        learner.training_loss(batch)[0].backward()
        optimizer.step()

    def l2l_step() -> None:
        optimizer.zero_grad()
        learn2learn_meta_loss(learner, maml, batch)
        optimizer.step()

    ours_times, l2l_times = [], []
    for _ in range(args.steps):  # alternated, so that a busy machine slows both alike
        ours_times.append(median_time(ours_step, 1))
        l2l_times.append(median_time(l2l_step, 1))
    ours_rate, l2l_rate = 1 / statistics.median(ours_times), 1 / statistics.median(l2l_times)
    print(f"meta-steps/s, second order: lightning-meta {ours_rate:.3f}, learn2learn-style loop {l2l_rate:.3f}, "
          f"ratio {ours_rate / l2l_rate:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
