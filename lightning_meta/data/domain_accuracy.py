"""Accuracy per domain for episodes drawn from several datasets (:class:`~lightning_meta.data.MultiDomainTasks`)."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_meta.episode import Episode
from lightning_meta.metrics import EpisodeAccuracyResult, mean_and_ci95, per_episode_accuracy


class DomainAccuracy(Metric):
    """Mean query accuracy over episodes, per domain, with its 95% confidence interval, synchronised across ranks.

    Each :meth:`update` stores the accuracy and the domain of every episode of a meta-batch; :meth:`compute` returns
    an :class:`~lightning_meta.metrics.EpisodeAccuracyResult` per domain name, over the episodes of all processes.
    Episodes without a domain (``episode.domains is None``) are skipped.

    Example:
        >>> import torch
        >>> from lightning_meta import Episode
        >>> metric = DomainAccuracy()
        >>> logits = torch.eye(2).repeat(3, 2, 1)  # 3 tasks, 4 queries each, predicting labels 0, 1, 0, 1
        >>> labels = torch.tensor([[0, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
        >>> batch = Episode(logits, labels, logits, labels, ways=2, batched=True,
        ...                 domains=torch.tensor([0, 1, 1]), domain_names=("omniglot", "cub"))
        >>> metric.update(logits, batch)
        >>> {name: round(float(r.mean), 3) for name, r in metric.compute().items()}
        {'omniglot': 1.0, 'cub': 0.625}
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("accuracies", default=[], dist_reduce_fx="cat")
        self.add_state("domains", default=[], dist_reduce_fx="cat")
        self.names: tuple[str, ...] = ()

    def update(self, preds: Tensor, episode: Episode) -> None:  # type: ignore[override]
        """Store the accuracy and domain of every episode of a meta-batch.

        Args:
            preds: query logits ``[n_tasks, n_query, ways]`` (or predicted labels ``[n_tasks, n_query]``).
            episode: the meta-batch (``batched=True``), whose ``domains`` and ``domain_names`` say where each task
                comes from.
        """
        if episode.domains is None or episode.domain_names is None:
            return
        self.names = episode.domain_names
        self.accuracies.append(per_episode_accuracy(preds, episode.query_y).to(torch.float32))  # type: ignore[union-attr,operator]
        self.domains.append(episode.domains.reshape(-1).to(self.device, torch.long))  # type: ignore[union-attr,operator]

    def compute(self) -> dict[str, EpisodeAccuracyResult]:
        """Per domain name (in ``domain_names`` order), the mean accuracy, its 95% interval and episode count."""
        if isinstance(self.accuracies, list) and not self.accuracies:
            return {}
        accuracies, domains = dim_zero_cat(self.accuracies), dim_zero_cat(self.domains)  # type: ignore[arg-type]
        out = {}
        for index, name in enumerate(self.names):
            mine = accuracies[domains == index]
            if mine.numel():
                mean, ci95 = mean_and_ci95(mine)
                out[name] = EpisodeAccuracyResult(mean=mean, ci95=ci95, n=mine.numel())
        return out


def log_domain_accuracy(module: L.LightningModule, metric: DomainAccuracy, stage: str) -> None:
    """Log ``{stage}/acc/<domain>`` and ``{stage}/acc_ci95/<domain>`` for every domain seen, then reset ``metric``.

    Call it at the end of a validation or test epoch (where a learner logs ``{stage}/acc``); it logs nothing when
    no episode carried a domain.
    """
    if metric.update_count:
        for name, result in metric.compute().items():
            module.log(f"{stage}/acc/{name}", result.mean, sync_dist=False, rank_zero_only=False)
            module.log(f"{stage}/acc_ci95/{name}", result.ci95, sync_dist=False, rank_zero_only=False)
    metric.reset()
