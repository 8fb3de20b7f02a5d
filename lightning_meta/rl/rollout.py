"""Rollouts: every task's trajectories collected together, with each task's own fast weights.

All tasks of a meta-batch, ``copies`` trajectories each, run in one Gymnasium vector environment: at every time step
one batched policy forward (``torch.func.vmap`` over the tasks when each has its own weights) and one vector step.
A task's action noise and environment reset seeds come from its own generator, so its trajectories do not depend on
which other tasks share the batch (or the rank): the DDP and resume guarantees rest on this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from lightning_meta import functional
from lightning_meta.data.sampler import episode_generator
from lightning_meta.rl.policies import Policy


@dataclass
class Trajectories:
    """The trajectories of a meta-batch, tasks first.

    Attributes:
        observations: ``[T, horizon, n, obs_size]``.
        actions: ``[T, horizon, n, action_size]`` (a categorical action as a float ``[..., 1]``).
        rewards: ``[T, horizon, n]``.
        mask: ``[T, horizon, n]``: 1 on the steps each episode reached.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor

    def returns(self) -> Tensor:
        """The mean undiscounted return of each task's trajectories: ``[T]``."""
        return (self.rewards * self.mask).sum(dim=1).mean(dim=-1)


def rollout_generators(seeds: Tensor, phase: int) -> list[torch.Generator]:
    """One generator per task for the rollouts of adaptation step ``phase`` (0: before adaptation)."""
    return [episode_generator(int(seed), "rollout", phase, 0) for seed in seeds.tolist()]


def per_task(params: Mapping[str, Tensor], model: torch.nn.Module) -> bool:
    """Whether ``params`` hold one set of weights per task (a leading task dimension) rather than shared ones."""
    reference = dict(model.named_parameters())
    return any(t.dim() == reference[name].dim() + 1 for name, t in params.items() if name in reference)


def policy_outputs(
    policy: Policy, params: Mapping[str, Tensor], observations: Tensor, *, strategy: functional.Strategy = "vmap"
) -> Tensor:
    """The policy's outputs for ``observations`` ``[T, ...]``: each task with its weights, or all with shared ones."""
    if per_task(params, policy):
        return functional.forward_batch(policy, params, observations, strategy=strategy)
    flat = observations.reshape(-1, observations.shape[-1])
    return functional.forward_with(policy, params, flat).reshape(*observations.shape[:-1], -1)


@torch.no_grad()
def collect(
    policy: Policy,
    params: Mapping[str, Tensor],
    envs: gym.vector.VectorEnv,
    *,
    generators: Sequence[torch.Generator],
    copies: int,
    horizon: int,
) -> Trajectories:
    """Run ``copies`` episodes of ``horizon`` steps per task, task ``i`` in sub-environments ``i*copies ..``.

    Args:
        policy: the policy module (its computation).
        params: shared weights, or per-task weights with a leading task dimension.
        envs: a vector environment of ``len(generators) * copies`` sub-environments, already set to the tasks.
        generators: one per task; each draws its task's action noise, then its reset seeds.
        copies: trajectories per task.
        horizon: steps per trajectory.

    Returns:
        The trajectories (observations in the dtype of the policy's parameters).
    """
    n_tasks = len(generators)
    dtype = next(iter(params.values())).dtype
    noise = torch.stack([policy.draw_noise(g, (horizon, copies)) for g in generators])  # [T, H, n, noise]
    reset_seeds = torch.stack([torch.randint(0, 2**31 - 1, (copies,), generator=g) for g in generators])
    observation, _ = envs.reset(seed=reset_seeds.flatten().tolist())  # type: ignore[arg-type]  # one per env
    observations, actions, rewards, masks = [], [], [], []
    alive = np.ones(n_tasks * copies, dtype=bool)
    for t in range(horizon):
        obs = torch.as_tensor(np.asarray(observation), dtype=dtype).reshape(n_tasks, copies, -1)
        action = policy.sample(policy_outputs(policy, params, obs), noise[:, t])
        step_action = action.reshape(n_tasks * copies, -1).numpy()
        if policy.discrete:
            step_action = step_action[:, 0].astype(np.int64)
        observation, reward, terminated, truncated, _ = envs.step(step_action)
        observations.append(obs)
        actions.append(action)
        rewards.append(torch.as_tensor(np.asarray(reward) * alive, dtype=dtype).reshape(n_tasks, copies))
        masks.append(torch.as_tensor(alive, dtype=dtype).reshape(n_tasks, copies))
        alive = alive & ~(np.asarray(terminated) | np.asarray(truncated))
    return Trajectories(
        observations=torch.stack(observations, dim=1),
        actions=torch.stack(actions, dim=1),
        rewards=torch.stack(rewards, dim=1),
        mask=torch.stack(masks, dim=1),
    )
