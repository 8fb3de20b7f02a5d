"""Lightning callbacks for meta-learning, imported as ``lightning_meta.callbacks``.

* :class:`MetaTest`: the few-shot test protocol (mean accuracy, 95% interval) on the test episodes while training.
* :class:`AdaptationCurve`: query accuracy or MSE after 0, 1, 2, 5, 10 inner steps (or 1, 5, 10 shots), logged and
  plotted.
* :class:`EpisodeGallery`: a picture of one validation episode with the learner's predictions.
* :class:`FirstOrderAnnealing`: first-order MAML early, second order later (MAML++).
* :class:`InnerStepsSchedule`: the number of inner steps of training as a function of the epoch.
* :class:`EpisodeProgress`: a rich progress bar in tasks per second, with the running query accuracy.
* :class:`SkipNonFiniteBatches`: skip meta-batches with a NaN or infinite meta-loss or meta-gradient instead of
  stopping.

The figures need matplotlib: ``pip install 'lightning-meta[plots]'``.
"""

from lightning_meta.callbacks.adaptation_curve import AdaptationCurve
from lightning_meta.callbacks.episode_gallery import EpisodeGallery
from lightning_meta.callbacks.episode_progress import EpisodeProgress
from lightning_meta.callbacks.first_order_annealing import FirstOrderAnnealing
from lightning_meta.callbacks.inner_steps_schedule import InnerStepsSchedule
from lightning_meta.callbacks.meta_test import MetaTest
from lightning_meta.callbacks.skip_nonfinite import SkipNonFiniteBatches

__all__ = [
    "AdaptationCurve",
    "EpisodeGallery",
    "EpisodeProgress",
    "FirstOrderAnnealing",
    "InnerStepsSchedule",
    "MetaTest",
    "SkipNonFiniteBatches",
]
