"""Meta-reinforcement learning: Gymnasium task families, seeded task datamodules, rollouts and MAML for RL."""

from lightning_meta.rl.datamodule import TaskBatch, TaskDataModule, TaskDataset
from lightning_meta.rl.envs import Navigation2DEnv, Navigation2DVectorEnv, TaskRewardWrapper
from lightning_meta.rl.families import (
    EnvFamily,
    GymnasiumFamily,
    HalfCheetahDirection,
    HalfCheetahVelocity,
    Navigation2D,
    PendulumDynamics,
)
from lightning_meta.rl.maml_pg import MAMLPolicyGradient
from lightning_meta.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, Policy
from lightning_meta.rl.rollout import Trajectories, collect

__all__ = [
    "CategoricalMLPPolicy",
    "EnvFamily",
    "GaussianMLPPolicy",
    "GymnasiumFamily",
    "HalfCheetahDirection",
    "HalfCheetahVelocity",
    "MAMLPolicyGradient",
    "Navigation2D",
    "Navigation2DEnv",
    "Navigation2DVectorEnv",
    "PendulumDynamics",
    "Policy",
    "TaskBatch",
    "TaskDataModule",
    "TaskDataset",
    "TaskRewardWrapper",
    "Trajectories",
    "collect",
]
