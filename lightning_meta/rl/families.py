"""Task families over Gymnasium: a distribution over an environment's parameters, sampled with a seeded generator.

A family draws one task's parameters (:meth:`EnvFamily.sample`, a pure function of a ``torch.Generator``), builds a
Gymnasium vector environment for many tasks at once (:meth:`EnvFamily.make_vector_env`) and sets each sub-environment
to its task (:meth:`EnvFamily.set_tasks`). Any Gymnasium environment becomes a family by naming the attributes that
vary and their ranges (:class:`GymnasiumFamily`), as :class:`PendulumDynamics` does for Pendulum's mass and length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from lightning_meta._checks import positive_int
from lightning_meta.rl.envs import Navigation2DEnv, Navigation2DVectorEnv, TaskRewardWrapper


class EnvFamily:
    """A distribution over environments: the tasks of meta-RL.

    Subclasses implement :meth:`sample`, :meth:`make_env` and :meth:`set_task`; :meth:`make_vector_env` and
    :meth:`set_tasks` step many tasks' environments together through Gymnasium's ``SyncVectorEnv`` unless a
    subclass has a faster vector environment.

    Args:
        horizon: steps per episode (every trajectory is cut there).
    """

    def __init__(self, *, horizon: int) -> None:
        self.horizon = positive_int(type(self).__name__, "horizon", horizon)
        self._spaces: tuple[gym.Space, gym.Space] | None = None

    def sample(self, generator: torch.Generator) -> dict[str, Tensor]:
        """One task's parameters (float64 tensors), a pure function of ``generator``'s state."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample(generator)")

    def make_env(self) -> gym.Env:
        """One environment (its task is set with :meth:`set_task`), cut at :attr:`horizon` steps."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_env()")

    def set_task(self, env: gym.Env, params: Mapping[str, Tensor]) -> None:
        """Set ``env`` to the task ``params`` (one task: the tensors of :meth:`sample`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement set_task(env, params)")

    def make_vector_env(self, num_envs: int) -> gym.vector.VectorEnv:
        """``num_envs`` environments stepped together (Gymnasium's ``SyncVectorEnv`` by default)."""
        return gym.vector.SyncVectorEnv([self.make_env] * num_envs, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)

    def set_tasks(self, envs: gym.vector.VectorEnv, params: Mapping[str, Tensor]) -> None:
        """Set sub-environment ``i`` of ``envs`` to the task ``{name: params[name][i]}``."""
        for i, env in enumerate(envs.envs):  # type: ignore[attr-defined]
            self.set_task(env, {name: value[i] for name, value in params.items()})

    @property
    def spaces(self) -> tuple[gym.Space, gym.Space]:
        """The observation and action spaces of one environment."""
        if self._spaces is None:
            env = self.make_env()
            self._spaces = (env.observation_space, env.action_space)
            env.close()
        return self._spaces

    @property
    def observation_size(self) -> int:
        """Length of a flattened observation."""
        return int(np.prod(self.spaces[0].shape or ()))


def _check_range(owner: str, name: str, bounds: Any) -> tuple[float, float]:
    if (
        not isinstance(bounds, (list, tuple))
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) for b in bounds)
    ):
        raise ValueError(f"{owner}: {name} must be a [low, high] pair of numbers, got {bounds!r}.")
    low, high = float(bounds[0]), float(bounds[1])
    if not low <= high:
        raise ValueError(f"{owner}: {name} must have low <= high, got [{low}, {high}].")
    return low, high


def _uniform(generator: torch.Generator, low: float, high: float, shape: tuple[int, ...] = ()) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


class GymnasiumFamily(EnvFamily):
    """Any Gymnasium environment as a task family: the named attributes are drawn uniformly from their ranges.

    Each task sets ``env.set_wrapper_attr(name, value)`` for every parameter (the attribute of the first wrapper, or
    of the base environment, that has it), so the parameter must be an attribute the environment reads at every step
    (Pendulum's ``m``, ``l`` and ``g``; Acrobot's ``LINK_MASS_1``; CartPole's ``force_mag``; not its ``masspole``,
    whose derived quantities are computed once in ``__init__``).

    Args:
        env_id: a registered Gymnasium id, such as ``"Pendulum-v1"``.
        parameters: ``{attribute: [low, high]}``.
        horizon: steps per episode.
        env_kwargs: extra arguments of ``gymnasium.make``.

    Raises:
        ValueError: for a range that is not ``[low, high]`` with ``low <= high``, or an attribute the environment
            does not have.

    Example:
        >>> import torch
        >>> family = GymnasiumFamily(env_id="Pendulum-v1", parameters={"m": [0.5, 1.5]}, horizon=50)
        >>> params = family.sample(torch.Generator().manual_seed(0))
        >>> env = family.make_env()
        >>> family.set_task(env, params)
        >>> env.unwrapped.m == float(params["m"])
        True
    """

    def __init__(
        self,
        *,
        env_id: str,
        parameters: dict[str, tuple[float, float]],
        horizon: int = 200,
        env_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(horizon=horizon)
        owner = type(self).__name__
        if not parameters:
            raise ValueError(f"{owner}: parameters must name at least one attribute that varies, got {parameters!r}.")
        self.env_id = env_id
        self.parameters = {name: _check_range(owner, f"parameters[{name!r}]", b) for name, b in parameters.items()}
        self.env_kwargs = dict(env_kwargs or {})
        env = self.make_env()
        for name in self.parameters:
            try:
                env.get_wrapper_attr(name)
            except AttributeError:
                raise ValueError(f"{owner}: {env_id} has no attribute {name!r} to vary.") from None
        env.close()

    @override
    def sample(self, generator: torch.Generator) -> dict[str, Tensor]:
        return {name: _uniform(generator, low, high) for name, (low, high) in self.parameters.items()}

    @override
    def make_env(self) -> gym.Env:
        return gym.make(self.env_id, max_episode_steps=self.horizon, **self.env_kwargs)

    @override
    def set_task(self, env: gym.Env, params: Mapping[str, Tensor]) -> None:
        for name, value in params.items():
            env.set_wrapper_attr(name, float(value))


class PendulumDynamics(GymnasiumFamily):
    """Pendulum swing-up with a sampled mass and length (Gymnasium's ``Pendulum-v1``: attributes ``m`` and ``l``).

    Args:
        mass: ``[low, high]`` of the pendulum's mass (Gymnasium's default is 1).
        length: ``[low, high]`` of its length (default 1).
        horizon: steps per episode (Gymnasium's default is 200).
    """

    def __init__(
        self,
        *,
        mass: tuple[float, float] = (0.5, 1.5),
        length: tuple[float, float] = (0.5, 1.5),
        horizon: int = 100,
    ) -> None:
        super().__init__(env_id="Pendulum-v1", parameters={"m": mass, "l": length}, horizon=horizon)


class Navigation2D(EnvFamily):
    """The MAML paper's 2D navigation: goals uniform in ``[low, high]^2``, reward minus the distance to the goal.

    Finn, Abbeel and Levine (2017), section 5.3; cbfinn/maml_rl's ``point_env_randgoal.py`` (see
    :class:`~lightning_meta.rl.envs.Navigation2DEnv`). The task parameter is ``goal`` (a 2-vector).

    Args:
        low: lower bound of each goal coordinate.
        high: upper bound of each goal coordinate.
        horizon: steps per episode (100 in the paper).
        vectorized: step all environments in one NumPy operation
            (:class:`~lightning_meta.rl.envs.Navigation2DVectorEnv`); ``False`` uses ``SyncVectorEnv`` of
            :class:`~lightning_meta.rl.envs.Navigation2DEnv`, one environment at a time (the same numbers).

    Example:
        >>> import torch
        >>> Navigation2D().sample(torch.Generator().manual_seed(0))["goal"].abs().max() <= 0.5
        tensor(True)
    """

    def __init__(self, *, low: float = -0.5, high: float = 0.5, horizon: int = 100, vectorized: bool = True) -> None:
        super().__init__(horizon=horizon)
        self.low, self.high = _check_range("Navigation2D", "[low, high]", [low, high])
        self.vectorized = vectorized

    @override
    def sample(self, generator: torch.Generator) -> dict[str, Tensor]:
        return {"goal": _uniform(generator, self.low, self.high, (2,))}

    @override
    def make_env(self) -> gym.Env:
        return gym.wrappers.TimeLimit(Navigation2DEnv(), max_episode_steps=self.horizon)

    @override
    def set_task(self, env: gym.Env, params: Mapping[str, Tensor]) -> None:
        env.unwrapped.goal = params["goal"].numpy().astype(np.float32)  # type: ignore[attr-defined]

    @override
    def make_vector_env(self, num_envs: int) -> gym.vector.VectorEnv:
        return Navigation2DVectorEnv(num_envs) if self.vectorized else super().make_vector_env(num_envs)

    @override
    def set_tasks(self, envs: gym.vector.VectorEnv, params: Mapping[str, Tensor]) -> None:
        if isinstance(envs, Navigation2DVectorEnv):
            envs.goals[:] = params["goal"].numpy()
        else:
            super().set_tasks(envs, params)


class HalfCheetahVelocity(GymnasiumFamily):
    """HalfCheetah running at a sampled target velocity (the MAML paper's Figure 5, left).

    Gymnasium's ``HalfCheetah-v5`` (needs ``mujoco``) with the reward of
    :class:`~lightning_meta.rl.envs.TaskRewardWrapper`; the task parameter is ``goal_velocity``.

    Args:
        velocity: ``[low, high]`` of the target velocity (``[0, 2]`` in the paper).
        horizon: steps per episode (200 in the paper).
    """

    def __init__(self, *, velocity: tuple[float, float] = (0.0, 2.0), horizon: int = 200) -> None:
        self._kind = "velocity"
        super().__init__(env_id="HalfCheetah-v5", parameters={"goal_velocity": velocity}, horizon=horizon)

    @override
    def make_env(self) -> gym.Env:
        env = gym.make(self.env_id, max_episode_steps=self.horizon, **self.env_kwargs)
        return TaskRewardWrapper(env, kind=self._kind)


class HalfCheetahDirection(HalfCheetahVelocity):
    """HalfCheetah running forward or backward, each with probability 1/2 (the MAML paper's Figure 5, right).

    The task parameter is ``goal_direction`` (+1 or -1).

    Args:
        horizon: steps per episode (200 in the paper).
    """

    def __init__(self, *, horizon: int = 200) -> None:
        EnvFamily.__init__(self, horizon=horizon)
        self._kind = "direction"
        self.env_id = "HalfCheetah-v5"
        self.parameters = {"goal_direction": (-1.0, 1.0)}
        self.env_kwargs = {}

    @override
    def sample(self, generator: torch.Generator) -> dict[str, Tensor]:
        forward = torch.rand((), generator=generator, dtype=torch.float64) < 0.5
        return {"goal_direction": torch.where(forward, 1.0, -1.0).to(torch.float64)}
