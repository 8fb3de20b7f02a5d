"""Stochastic policies for the functional inner loop: the network's output is the action distribution's parameters.

A policy's ``forward`` returns a plain tensor (so :func:`lightning_meta.functional.forward_with` and
``forward_batch`` run it with any fast weights), and the policy turns that tensor into log-probabilities
(:meth:`Policy.log_prob`) and actions (:meth:`Policy.sample`, from noise drawn beforehand with a seeded generator, so
a rollout is a pure function of its seeds). Every operation is vmap-safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from typing_extensions import override

from lightning_meta._checks import positive_int
from lightning_meta.models import records_config


def _mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, positive_int("policy", "hidden", h)), nn.Tanh()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class Policy(nn.Module):
    """Base of the policies: ``forward(observations)`` returns the distribution parameters."""

    #: Whether actions are integers (categorical) rather than vectors of floats.
    discrete: bool = False

    def action_size(self) -> int:
        """Length of one action vector (1 for a categorical action)."""
        raise NotImplementedError

    def noise_size(self) -> int:
        """Length of the noise one action is made from."""
        raise NotImplementedError

    def draw_noise(self, generator: torch.Generator, shape: tuple[int, ...]) -> Tensor:
        """Noise for ``shape`` actions, from ``generator``: ``[*shape, noise_size]``."""
        raise NotImplementedError

    def sample(self, output: Tensor, noise: Tensor) -> Tensor:
        """Actions from the network's ``output`` and the noise of :meth:`draw_noise`."""
        raise NotImplementedError

    def log_prob(self, output: Tensor, actions: Tensor) -> Tensor:
        """Log-probability of each action (summed over action dimensions): shape ``output.shape[:-1]``."""
        raise NotImplementedError


@records_config
class GaussianMLPPolicy(Policy):
    """A diagonal Gaussian policy: an MLP (tanh) gives the mean, a learned state-independent log-std the spread.

    As in the MAML paper's RL experiments (two hidden layers of 100 units there, 64 in pytorch-maml-rl).
    ``forward`` returns ``[..., 2 * action_size]``: the mean, then the log-std broadcast to it.

    Args:
        observation_size: length of an observation.
        action_size: length of an action.
        hidden: hidden layer widths.
        init_std: initial standard deviation.

    Example:
        >>> import torch
        >>> policy = GaussianMLPPolicy(observation_size=2, action_size=2, hidden=[8])
        >>> out = policy(torch.zeros(5, 2))
        >>> actions = policy.sample(out, policy.draw_noise(torch.Generator().manual_seed(0), (5,)))
        >>> out.shape, actions.shape, policy.log_prob(out, actions).shape
        (torch.Size([5, 4]), torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(
        self,
        *,
        observation_size: int,
        action_size: int,
        hidden: Sequence[int] = (64, 64),
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        positive_int("GaussianMLPPolicy", "observation_size", observation_size)
        self._action_size = positive_int("GaussianMLPPolicy", "action_size", action_size)
        if not init_std > 0:
            raise ValueError(f"GaussianMLPPolicy: init_std must be positive, got {init_std!r}.")
        self.mean = _mlp(observation_size, list(hidden), action_size)
        self.log_std = nn.Parameter(torch.full((action_size,), math.log(init_std)))

    @override
    def action_size(self) -> int:
        return self._action_size

    @override
    def noise_size(self) -> int:
        return self._action_size

    @override
    def forward(self, observations: Tensor) -> Tensor:
        mean = self.mean(observations)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)

    @override
    def draw_noise(self, generator: torch.Generator, shape: tuple[int, ...]) -> Tensor:
        return torch.randn((*shape, self._action_size), generator=generator)

    @override
    def sample(self, output: Tensor, noise: Tensor) -> Tensor:
        mean, log_std = output.chunk(2, dim=-1)
        return mean + log_std.exp() * noise.to(output.dtype)

    @override
    def log_prob(self, output: Tensor, actions: Tensor) -> Tensor:
        mean, log_std = output.chunk(2, dim=-1)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


@records_config
class CategoricalMLPPolicy(Policy):
    """A categorical policy over ``n_actions`` discrete actions: an MLP (tanh) gives the logits.

    Actions are drawn by the Gumbel-max trick from noise drawn beforehand; an action is stored as a float
    ``[..., 1]`` (so trajectories of both kinds share one layout).

    Args:
        observation_size: length of an observation.
        n_actions: number of actions.
        hidden: hidden layer widths.

    Example:
        >>> import torch
        >>> policy = CategoricalMLPPolicy(observation_size=4, n_actions=3, hidden=[8])
        >>> out = policy(torch.zeros(5, 4))
        >>> actions = policy.sample(out, policy.draw_noise(torch.Generator().manual_seed(0), (5,)))
        >>> actions.shape, policy.log_prob(out, actions).shape
        (torch.Size([5, 1]), torch.Size([5]))
    """

    discrete = True

    def __init__(self, *, observation_size: int, n_actions: int, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        positive_int("CategoricalMLPPolicy", "observation_size", observation_size)
        self.n_actions = positive_int("CategoricalMLPPolicy", "n_actions", n_actions)
        self.logits = _mlp(observation_size, list(hidden), n_actions)

    @override
    def action_size(self) -> int:
        return 1

    @override
    def noise_size(self) -> int:
        return self.n_actions

    @override
    def forward(self, observations: Tensor) -> Tensor:
        return self.logits(observations)

    @override
    def draw_noise(self, generator: torch.Generator, shape: tuple[int, ...]) -> Tensor:
        uniform = torch.rand((*shape, self.n_actions), generator=generator).clamp_(1e-20, 1.0)
        return -torch.log(-torch.log(uniform))  # Gumbel(0, 1)

    @override
    def sample(self, output: Tensor, noise: Tensor) -> Tensor:
        return (output + noise.to(output.dtype)).argmax(-1, keepdim=True).to(output.dtype)

    @override
    def log_prob(self, output: Tensor, actions: Tensor) -> Tensor:
        log_p = torch.log_softmax(output, dim=-1)
        return log_p.gather(-1, actions.long()).squeeze(-1)
