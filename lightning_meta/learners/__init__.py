"""Meta-learners: one LightningModule per method on the shared MetaLearner base."""

from lightning_meta.learners.anil import ANIL
from lightning_meta.learners.base import MetaLearner
from lightning_meta.learners.gradient import GradientLearner
from lightning_meta.learners.imaml import IMAML
from lightning_meta.learners.maml import MAML
from lightning_meta.learners.matchingnet import MatchingNet
from lightning_meta.learners.metasgd import MetaSGD
from lightning_meta.learners.protonet import ProtoNet
from lightning_meta.learners.r2d2 import R2D2
from lightning_meta.learners.reptile import Reptile
from lightning_meta.learners.snail import SNAIL

__all__ = [
    "ANIL",
    "IMAML",
    "MAML",
    "SNAIL",
    "GradientLearner",
    "MatchingNet",
    "MetaLearner",
    "MetaSGD",
    "ProtoNet",
    "R2D2",
    "Reptile",
]
