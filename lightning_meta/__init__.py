"""lightning-meta: meta-learning for PyTorch Lightning.

Learners are LightningModules (:mod:`lightning_meta.learners`), fed by episodic LightningDataModules
(:mod:`lightning_meta.data`) whose batches are :class:`Episode` meta-batches.
"""

from lightning_meta.data import EpisodicDataModule
from lightning_meta.episode import Episode, SupportSet
from lightning_meta.inner_loop import InnerLoop
from lightning_meta.learners import (
    ANIL,
    IMAML,
    MAML,
    R2D2,
    SNAIL,
    MatchingNet,
    MetaLearner,
    MetaSGD,
    ProtoNet,
    Reptile,
)
from lightning_meta.metrics import EpisodeAccuracy
from lightning_meta.models import MLP, Conv4, ResNet12

__version__ = "0.1.0"

__all__ = [
    "ANIL",
    "IMAML",
    "MAML",
    "MLP",
    "R2D2",
    "Conv4",
    "Episode",
    "EpisodeAccuracy",
    "EpisodicDataModule",
    "InnerLoop",
    "MatchingNet",
    "MetaLearner",
    "MetaSGD",
    "ProtoNet",
    "ResNet12",
    "Reptile",
    "SNAIL",
    "SupportSet",
    "__version__",
]
