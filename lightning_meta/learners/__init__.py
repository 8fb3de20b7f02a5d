"""Meta-learners: one LightningModule per method on the shared MetaLearner base."""

from lightning_meta.learners.matchingnet import MatchingNet
from lightning_meta.learners.protonet import ProtoNet
from lightning_meta.learners.r2d2 import R2D2

__all__: list[str] = []
__all__ += ["MatchingNet", "ProtoNet", "R2D2"]
