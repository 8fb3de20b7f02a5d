"""Environments of the MAML paper's meta-RL tasks that Gymnasium does not ship.

* :class:`Navigation2DEnv`: the 2D point robot of Finn et al. (2017), section 5.3, as in cbfinn/maml_rl's
  ``point_env_randgoal.py``: the state is the position (starting at the origin), the action is a velocity clipped to
  ``[-0.1, 0.1]`` per coordinate, the reward is minus the distance to the goal. The reference also ends an episode
  within 0.01 of the goal on both axes; here episodes always last the horizon (a policy that reaches the goal keeps
  collecting rewards near 0, so returns differ from the reference's by at most that tail, which is rare).
* :class:`Navigation2DVectorEnv`: the same for many goals at once, stepped in one NumPy operation: a Gymnasium
  ``VectorEnv`` with the observations, rewards and flags that ``SyncVectorEnv`` of :class:`Navigation2DEnv` gives.
* :class:`TaskRewardWrapper`: HalfCheetah with the paper's task rewards (target velocity or direction).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from typing_extensions import override

#: The largest action coordinate (the velocity limit of the point robot).
MAX_SPEED = 0.1


class Navigation2DEnv(gym.Env):
    """The point robot of the MAML paper's 2D navigation tasks; ``goal`` is the task.

    Args:
        goal: the goal position ``(x, y)``.

    Example:
        >>> env = Navigation2DEnv(goal=(0.3, -0.4))
        >>> obs, _ = env.reset(seed=0)
        >>> obs.tolist(), round(float(env.step(np.array([1.0, 0.0], dtype=np.float32))[1]), 4)
        ([0.0, 0.0], -0.4472)
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, goal: tuple[float, float] = (0.0, 0.0)) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-MAX_SPEED, MAX_SPEED, shape=(2,), dtype=np.float32)
        self.goal = np.asarray(goal, dtype=np.float32)
        self._state = np.zeros(2, dtype=np.float32)

    @override
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._state = np.zeros(2, dtype=np.float32)
        return self._state.copy(), {}

    @override
    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._state = self._state + np.clip(np.asarray(action, dtype=np.float32), -MAX_SPEED, MAX_SPEED)
        reward = -float(np.sqrt(((self._state - self.goal) ** 2).sum()))
        return self._state.copy(), reward, False, False, {}


class Navigation2DVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` point robots stepped together in NumPy; ``goals`` (``[num_envs, 2]``) holds their tasks.

    Episodes never terminate; the caller stops after the horizon (no automatic reset is needed).

    Example:
        >>> envs = Navigation2DVectorEnv(num_envs=2)
        >>> envs.goals[:] = [[0.5, 0.0], [0.0, -0.5]]
        >>> _ = envs.reset(seed=0)
        >>> envs.step(np.full((2, 2), 0.5, dtype=np.float32))[1].round(4).tolist()
        [-0.4123, -0.6083]
    """

    metadata: dict[str, Any] = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.single_observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.single_action_space = spaces.Box(-MAX_SPEED, MAX_SPEED, shape=(2,), dtype=np.float32)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.goals = np.zeros((num_envs, 2), dtype=np.float32)
        self._states = np.zeros((num_envs, 2), dtype=np.float32)
        self._done = np.zeros(num_envs, dtype=bool)

    @override
    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        self._states = np.zeros((self.num_envs, 2), dtype=np.float32)
        return self._states.copy(), {}

    @override
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        self._states = self._states + np.clip(np.asarray(actions, dtype=np.float32), -MAX_SPEED, MAX_SPEED)
        rewards = -np.sqrt(((self._states - self.goals) ** 2).sum(axis=1)).astype(np.float64)
        return self._states.copy(), rewards, self._done.copy(), self._done.copy(), {}


class TaskRewardWrapper(gym.Wrapper):
    """HalfCheetah's reward replaced by the MAML paper's task reward (cbfinn/maml_rl's half_cheetah_env_rand*).

    ``goal_velocity`` (velocity tasks): reward ``-|v - goal_velocity| - 0.05 * |a|^2``; ``goal_direction`` (direction
    tasks, +1 forward or -1 backward): reward ``goal_direction * v - 0.05 * |a|^2``, with ``v`` the forward velocity.
    Exactly one of the two is used, as ``kind`` says.

    Args:
        env: a Gymnasium HalfCheetah environment (its ``info`` carries ``x_velocity``).
        kind: ``"velocity"`` or ``"direction"``.
    """

    def __init__(self, env: gym.Env, *, kind: str) -> None:
        super().__init__(env)
        if kind not in ("velocity", "direction"):
            raise ValueError(f"TaskRewardWrapper: kind must be 'velocity' or 'direction', got {kind!r}.")
        self.kind = kind
        self.goal_velocity = 0.0
        self.goal_direction = 1.0

    @override
    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        observation, _, terminated, truncated, info = self.env.step(action)
        velocity = float(info["x_velocity"])
        control_cost = 0.05 * float(np.square(action).sum())
        if self.kind == "velocity":
            reward = -abs(velocity - self.goal_velocity) - control_cost
        else:
            reward = self.goal_direction * velocity - control_cost
        return observation, reward, terminated, truncated, info
