"""Returns, the linear feature baseline, generalized advantage estimation and the policy-gradient loss.

Trajectories are laid out ``[..., horizon, n_trajectories]`` (time before trajectories, any leading task
dimensions); ``mask`` is 1 on the steps an episode reached and 0 after it terminated.

* :func:`discounted_returns`: ``R_t = r_t + gamma * R_{t+1}``.
* :func:`linear_baseline`: the linear feature baseline of Duan et al. (2016), fitted per task by ridge regression
  of the returns on ``(s, s^2, t, t^2, t^3, 1)``, as in the MAML paper and pytorch-maml-rl.
* :func:`gae`: generalized advantage estimation (Schulman et al., 2016). It calls TorchRL's functional
  ``generalized_advantage_estimate`` when ``torchrl`` is installed (advantages are constants of the inner loop, so a
  library's estimator fits without change) and :func:`gae_recursion` otherwise, and always for float64 inputs:
  TorchRL 0.14 multiplies ``gamma`` by an integer mask, which makes a float32 tensor, so its float64 estimates are
  off by about 3e-7 (measured); tests check both against a hand-written loop.
* :func:`policy_gradient_loss`: REINFORCE with advantages, ``-mean(log pi(a|s) * A)`` over the reached steps.
  TorchRL's ``ClipPPOLoss`` is not used: it evaluates its own actor module through TensorDict parameters, while the
  inner loop here needs the loss of any fast-weight dictionary (through ``torch.func.functional_call`` and vmap).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

_HAS_TORCHRL = importlib.util.find_spec("torchrl") is not None


def discounted_returns(rewards: Tensor, mask: Tensor, *, gamma: float) -> Tensor:
    """``R_t = r_t + gamma * R_{t+1}`` along the time dimension (``-2``), zero after an episode ends.

    Example:
        >>> import torch
        >>> discounted_returns(torch.ones(3, 1), torch.ones(3, 1), gamma=0.5).flatten().tolist()
        [1.75, 1.5, 1.0]
    """
    rewards = rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0, :])
    for t in range(rewards.shape[-2] - 1, -1, -1):
        running = rewards[..., t, :] + gamma * running
        returns[..., t, :] = running
    return returns * mask


def baseline_features(observations: Tensor, mask: Tensor) -> Tensor:
    """Features ``(s, s^2, t/100, (t/100)^2, (t/100)^3, 1)`` of every step, zero after an episode ends.

    Args:
        observations: ``[..., horizon, n, obs_size]``.
        mask: ``[..., horizon, n]``.

    Returns:
        ``[..., horizon, n, 2 * obs_size + 4]``.
    """
    ones = mask.unsqueeze(-1)
    obs = observations * ones
    horizon = observations.shape[-3]
    time = torch.arange(horizon, dtype=obs.dtype, device=obs.device).view(horizon, 1, 1) / 100.0
    time = time.expand(*obs.shape[:-1], 1) * ones
    return torch.cat([obs, obs**2, time, time**2, time**3, ones], dim=-1)


def linear_baseline(observations: Tensor, returns: Tensor, mask: Tensor, *, reg: float = 1e-5) -> Tensor:
    """Values of the linear feature baseline fitted to ``returns`` on the same steps (one fit per leading index).

    Ridge regression in float64, ``(X^T X + reg I) w = X^T R``; ``reg`` grows tenfold (up to five times) while the
    system is singular, as in rllab and pytorch-maml-rl.

    Args:
        observations: ``[..., horizon, n, obs_size]``.
        returns: ``[..., horizon, n]``.
        mask: ``[..., horizon, n]``.
        reg: the ridge coefficient.

    Returns:
        The fitted values ``[..., horizon, n]`` (in the dtype of ``returns``).
    """
    features = baseline_features(observations.double(), mask.double())
    x = features.flatten(-3, -2)  # [..., steps, F]
    y = returns.double().flatten(-2, -1).unsqueeze(-1)  # [..., steps, 1]
    xtx = x.transpose(-1, -2) @ x
    xty = x.transpose(-1, -2) @ y
    eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype, device=xtx.device)
    for _ in range(5):
        weights, info = torch.linalg.solve_ex(xtx + reg * eye, xty)
        if not bool(info.any()) and bool(torch.isfinite(weights).all()):
            break
        reg *= 10
    values = (features @ weights.unsqueeze(-3)).squeeze(-1)
    return values.to(returns.dtype) * mask


def gae_recursion(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float) -> Tensor:
    """GAE by its recursion: ``A_t = delta_t + gamma * lam * A_{t+1}``, ``delta_t = r_t + gamma V_{t+1} - V_t``.

    The value after the last reached step (at the horizon or at termination) is 0, as in pytorch-maml-rl.
    """
    rewards, values = rewards * mask, values * mask
    next_values = torch.cat([values[..., 1:, :], torch.zeros_like(values[..., :1, :])], dim=-2)
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[..., 0, :])
    for t in range(deltas.shape[-2] - 1, -1, -1):
        running = deltas[..., t, :] + gamma * lam * running
        advantages[..., t, :] = running
    return advantages * mask


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float) -> Tensor:
    """Generalized advantage estimates ``[..., horizon, n]`` (TorchRL's when installed; see the module notes).

    Example:
        >>> import torch
        >>> rewards, values, mask = torch.tensor([[1.0], [1.0]]), torch.tensor([[0.5], [0.5]]), torch.ones(2, 1)
        >>> gae(rewards, values, mask, gamma=1.0, lam=1.0).flatten().tolist()
        [1.5, 0.5]
    """
    if not _HAS_TORCHRL or rewards.dtype == torch.float64:
        return gae_recursion(rewards, values, mask, gamma=gamma, lam=lam)
    from torchrl.objectives.value.functional import generalized_advantage_estimate

    rewards, values = rewards * mask, values * mask
    next_values = torch.cat([values[..., 1:, :], torch.zeros_like(values[..., :1, :])], dim=-2)
    next_mask = torch.cat([mask[..., 1:, :], torch.zeros_like(mask[..., :1, :])], dim=-2)
    done = next_mask == 0  # the episode has no next step: it terminated, or the horizon cut it
    # TorchRL wants [*batch, time, features]: move the trajectories before time
    args = [t.transpose(-1, -2).unsqueeze(-1) for t in (values, next_values, rewards, done)]
    advantages, _ = generalized_advantage_estimate(gamma, lam, *args, terminated=args[-1], time_dim=-2)
    return advantages.squeeze(-1).transpose(-1, -2) * mask


def normalize(advantages: Tensor, mask: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Advantages with zero mean and unit variance over the reached steps of each task (last two dimensions)."""
    count = mask.sum(dim=(-2, -1), keepdim=True).clamp_min(1)
    mean = (advantages * mask).sum(dim=(-2, -1), keepdim=True) / count
    var = (((advantages - mean) * mask) ** 2).sum(dim=(-2, -1), keepdim=True) / count
    return (advantages - mean) / (var.sqrt() + eps) * mask


def policy_gradient_loss(log_probs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """REINFORCE: ``-sum(log_probs * advantages * mask) / sum(mask)`` (advantages are constants)."""
    return -(log_probs * advantages.detach() * mask).sum() / mask.sum().clamp_min(1)
