"""Episodes from several datasets at once, with Meta-Dataset's variable-way variable-shot sampling as an option.

Meta-Dataset (Triantafillou et al., ICLR 2020) trains and evaluates on episodes drawn from many datasets: each
episode comes from one dataset, and its number of classes (ways), support examples per class (shots, unbalanced
across classes) and query examples per class are drawn at random within limits (the paper's Appendix, "Episode
sampling"). :class:`MultiDomainTasks` is that task family over any labelled datasets; :class:`VariableEpisodes`
holds the limits of the variable sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset

from lightning_meta._checks import positive_int
from lightning_meta.data.tasks import LabelledTasks
from lightning_meta.episode import Episode


@dataclass(frozen=True)
class VariableEpisodes:
    """The limits of Meta-Dataset's variable-way variable-shot episodes (Triantafillou et al., 2020, Appendix).

    For a dataset split whose class ``c`` holds ``n_c`` examples, one episode is drawn as follows:

    1. ways ``N`` uniform in ``[min_ways, min(max_ways, number of classes)]``, then ``N`` distinct classes;
    2. queries per class ``q = min(max_queries, min_c floor(n_c / 2))`` (the same for every class);
    3. support size ``|S| = min(max_support, sum_c ceil(beta * min(max_shots, n_c - q)))``, ``beta ~ U(0, 1)``;
    4. shots of class ``c``: ``min(floor(R_c / sum(R) * (|S| - N)) + 1, n_c - q)`` with ``R_c = exp(alpha_c)``,
       ``alpha_c ~ U(min_log_weight, max_log_weight)``: every class has at least one shot, and the classes are
       unbalanced by up to a factor ``exp(max_log_weight - min_log_weight)`` (4 by default).

    The defaults are the paper's. (Meta-Dataset's class choice that follows the ImageNet hierarchy and the
    Omniglot alphabets is not implemented: classes are drawn uniformly.)

    Args:
        min_ways: fewest classes per episode.
        max_ways: most classes per episode.
        max_queries: most query examples per class.
        max_support: most support examples per episode.
        max_shots: most support examples any class contributes to the support size of step 3.
        min_log_weight: lower end of the log-weights ``alpha_c``.
        max_log_weight: upper end of the log-weights ``alpha_c``.

    Example:
        >>> import torch
        >>> sizes = VariableEpisodes()
        >>> classes, shots, queries = sizes.draw(torch.full((20,), 30), torch.Generator().manual_seed(0))
        >>> 5 <= len(classes) <= 20, bool((shots >= 1).all()), queries
        (True, True, 10)
    """

    min_ways: int = 5
    max_ways: int = 50
    max_queries: int = 10
    max_support: int = 500
    max_shots: int = 100
    min_log_weight: float = math.log(0.5)
    max_log_weight: float = math.log(2.0)

    def __post_init__(self) -> None:
        for name in ("min_ways", "max_ways", "max_queries", "max_support", "max_shots"):
            positive_int("VariableEpisodes", name, getattr(self, name))
        if self.min_ways > self.max_ways:
            raise ValueError(
                f"VariableEpisodes: min_ways={self.min_ways} exceeds max_ways={self.max_ways}; it must be at most that."
            )
        if self.max_support < self.max_ways:
            raise ValueError(
                f"VariableEpisodes: max_support={self.max_support} must be at least max_ways={self.max_ways} "
                "(every class gets at least one shot)."
            )
        if not self.min_log_weight <= self.max_log_weight:
            raise ValueError(
                f"VariableEpisodes: min_log_weight={self.min_log_weight} exceeds max_log_weight={self.max_log_weight}."
            )

    def draw(self, counts: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, int]:
        """Draw the classes, the shots of each and the queries per class of one episode.

        Args:
            counts: examples of each class of the dataset, ``[n_classes]``.
            generator: the episode's generator (the draws use it in a fixed order).

        Returns:
            ``(classes, shots, queries)``: class indices ``[N]``, shots per class ``[N]`` and queries per class.
        """
        n_classes = len(counts)
        ways = int(torch.randint(self.min_ways, min(self.max_ways, n_classes) + 1, (1,), generator=generator))
        classes = torch.randperm(n_classes, generator=generator)[:ways]
        sizes = counts[classes]
        queries = min(self.max_queries, int(sizes.min()) // 2)
        beta = torch.rand((), generator=generator, dtype=torch.float64)
        spare = (sizes - queries).clamp(max=self.max_shots)
        support = min(self.max_support, int(torch.ceil(beta * spare).sum()))
        alpha = torch.empty(ways, dtype=torch.float64).uniform_(
            self.min_log_weight, self.max_log_weight, generator=generator
        )
        weights = alpha.exp()
        shots = torch.floor(weights / weights.sum() * max(support - ways, 0)).long() + 1
        return classes, torch.minimum(shots, sizes - queries), queries


class MultiDomainTasks:
    """Classification tasks from several labelled datasets: each episode from one dataset, chosen by weight.

    Every episode draws its domain (dataset) with probability proportional to ``weights``, then a task from that
    dataset only: ``ways``-way ``shots``-shot tasks as the datamodule asks, or with ``variable`` set, Meta-Dataset's
    variable-way variable-shot tasks (:class:`VariableEpisodes`; the datamodule's ``ways``, ``shots`` and
    ``queries`` are then ignored). Inputs are brought to one shape: grey images are repeated to ``channels``
    channels and images are resized to ``image_size`` (bilinear with antialiasing) when their size differs; build
    the datasets at the common size (``Omniglot(..., image_size=84)``) to save that resize in every episode.

    Each episode carries its domain: ``episode.domains`` indexes ``episode.domain_names`` (the keys of
    ``domains``), so evaluation can report accuracy per domain
    (:class:`~lightning_meta.data.domain_accuracy.DomainAccuracy`).

    Variable episodes differ in size, so they cannot share a meta-batch: the datamodule requires
    ``tasks_per_batch=1`` and ``eval_tasks_per_batch=1`` for them (accumulate gradients over several steps with the
    Trainer's ``accumulate_grad_batches`` for the meta-gradient of a larger meta-batch).

    Args:
        domains: the datasets by name, each a map-style dataset of ``(image [C, H, W], label)`` pairs (or a
            :class:`~lightning_meta.data.LabelledTasks`).
        optional_domains: more datasets by name, each given as a function that builds it (in a LightningCLI config,
            a ``class_path`` with ``init_args``, built lazily): one whose files are absent (it raises
            ``FileNotFoundError``) is left out with a warning. This lets one config use every dataset a machine
            holds.
        weights: the relative probability of each domain, by name (default: all equal, as Meta-Dataset trains);
            the weight of an optional domain that was left out is dropped.
        variable: the limits of variable-way variable-shot episodes, or ``None`` for fixed-size episodes.
        image_size: side of the square inputs; by default every domain must already have one size.
        channels: channels of the inputs; by default the largest of the domains (grey images are repeated).
        split: the split's name, for error messages.

    Raises:
        ValueError: no domains, weights that are negative, all zero or name unknown domains, inputs that are not
            images ``[C, H, W]``, sizes that differ without ``image_size``, or channels that cannot be converted.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> grey = TensorDataset(torch.rand(60, 1, 8, 8), torch.arange(6).repeat_interleave(10))
        >>> colour = TensorDataset(torch.rand(80, 3, 12, 12), torch.arange(8).repeat_interleave(10))
        >>> grey.targets, colour.targets = grey.tensors[1], colour.tensors[1]  # labels without a pass over the data
        >>> tasks = MultiDomainTasks({"grey": grey, "colour": colour}, variable=VariableEpisodes(), image_size=8)
        >>> task = tasks.sample(torch.Generator().manual_seed(0), ways=5, shots=1, queries=1)
        >>> task.support_x.shape[1:], task.domain_names[int(task.domains)] in ("grey", "colour")
        (torch.Size([3, 8, 8]), True)
    """

    def __init__(
        self,
        domains: Mapping[str, Dataset],
        *,
        optional_domains: Mapping[str, Callable[[], Dataset]] | None = None,
        weights: Mapping[str, float] | None = None,
        variable: VariableEpisodes | None = None,
        image_size: int | None = None,
        channels: int | None = None,
        split: str = "train",
    ) -> None:
        domains = dict(domains)
        for name, build in (optional_domains or {}).items():
            if name in domains:
                raise ValueError(f"MultiDomainTasks: domain {name!r} is both in domains and in optional_domains.")
            try:
                domains[name] = build()
            except FileNotFoundError as err:
                rank_zero_warn(f"MultiDomainTasks ({split}): optional domain {name!r} left out: {err}")
        if not domains:
            raise ValueError("MultiDomainTasks: domains must name at least one dataset, got none.")
        if weights is not None:
            known = set(domains) | set(optional_domains or {})
            unknown = sorted(set(weights) - known)
            if unknown:
                raise ValueError(
                    f"MultiDomainTasks: weights name unknown domains {unknown}; the domains are {sorted(known)}."
                )
            weights = {name: value for name, value in weights.items() if name in domains}
        if image_size is not None:
            positive_int("MultiDomainTasks", "image_size", image_size)
        if channels is not None:
            positive_int("MultiDomainTasks", "channels", channels)
        self.names = tuple(domains)
        self.variable = variable
        self.split = split
        self.tasks = [
            data if isinstance(data, LabelledTasks) else LabelledTasks(data, split=f"{split} ({name})")
            for name, data in domains.items()
        ]
        self.probabilities = self._probabilities(weights)
        first = torch.tensor([0])
        shapes = {name: tuple(t.gather(first).shape[1:]) for name, t in zip(self.names, self.tasks, strict=True)}
        if any(len(shape) != 3 for shape in shapes.values()):
            raise ValueError(f"MultiDomainTasks: every domain must hold images [C, H, W]; input shapes: {shapes}.")
        sizes = {shape[1:] for shape in shapes.values()}
        if image_size is None and len(sizes) > 1:
            raise ValueError(
                f"MultiDomainTasks: the domains' images differ in size ({shapes}); pass image_size=... to resize them "
                "to one size."
            )
        self.channels = channels or max(shape[0] for shape in shapes.values())
        bad = {name: shape[0] for name, shape in shapes.items() if shape[0] not in (1, self.channels)}
        if bad:
            raise ValueError(
                f"MultiDomainTasks: channels={self.channels}, but domains {bad} have channel counts that can be "
                "neither kept nor repeated from grey (1 channel)."
            )
        self.image_size = image_size or next(iter(sizes))[0]

    def _probabilities(self, weights: Mapping[str, float] | None) -> Tensor:
        if weights is None:
            return torch.full((len(self.names),), 1.0 / len(self.names), dtype=torch.float64)
        values = torch.tensor([float(weights.get(name, 0.0)) for name in self.names], dtype=torch.float64)
        if bool((values < 0).any()) or not bool(values.sum() > 0) or not bool(values.isfinite().all()):
            raise ValueError(
                f"MultiDomainTasks: weights must be finite, non-negative and not all zero, got {dict(weights)}."
            )
        return values / values.sum()

    @property
    def variable_size(self) -> bool:
        """Whether episodes differ in ways and shots (they then need one task per meta-batch)."""
        return self.variable is not None

    def validate(self, *, ways: int, shots: int, queries: int, split: str) -> None:
        """Raise ``ValueError`` when a domain with non-zero weight cannot give the requested episodes."""
        for name, tasks, p in zip(self.names, self.tasks, self.probabilities.tolist(), strict=True):
            if p == 0:
                continue
            if self.variable is None:
                try:
                    tasks.validate(ways=ways, shots=shots, queries=queries, split=split)
                except ValueError as err:
                    raise ValueError(f"MultiDomainTasks domain {name!r}: {err}") from err
                continue
            if tasks.n_classes < self.variable.min_ways:
                raise ValueError(
                    f"MultiDomainTasks domain {name!r} ({split} split) has {tasks.n_classes} classes, fewer than "
                    f"VariableEpisodes.min_ways={self.variable.min_ways}."
                )
            smallest = int(torch.argmin(tasks.counts))
            if int(tasks.counts[smallest]) < 2:
                raise ValueError(
                    f"MultiDomainTasks domain {name!r} ({split} split): class {tasks.class_name(smallest)} holds "
                    f"{int(tasks.counts[smallest])} example; variable episodes need at least 2 per class (1 support "
                    "and 1 query)."
                )

    def sample(self, generator: torch.Generator, *, ways: int, shots: int, queries: int) -> Episode:
        """Draw the domain, then one task from it (of the given size, or of a variable size)."""
        domain = int(torch.multinomial(self.probabilities, 1, generator=generator))
        tasks = self.tasks[domain]
        if self.variable is None:
            task = tasks.sample(generator, ways=ways, shots=shots, queries=queries)
        else:
            task = self._sample_variable(tasks, self.variable, generator)
        return Episode(
            self._common(task.support_x),
            task.support_y,
            self._common(task.query_x),
            task.query_y,
            ways=task.ways,
            domains=torch.tensor(domain),
            domain_names=self.names,
        )

    @staticmethod
    def _sample_variable(tasks: LabelledTasks, variable: VariableEpisodes, generator: torch.Generator) -> Episode:
        classes, shots, queries = variable.draw(tasks.counts, generator)
        ways = len(classes)
        keys = torch.rand(ways, tasks.members.shape[1], generator=generator)
        keys.masked_fill_(~tasks.valid[classes], 2.0)  # padding sorts last
        width = int(shots.max()) + queries
        picks = keys.argsort(dim=1)[:, :width]
        index = tasks.members[classes.unsqueeze(1), picks]  # [ways, width]
        position = torch.arange(width).unsqueeze(0)
        support_index = index[position < shots.unsqueeze(1)]  # row-major: grouped by class
        query_index = index[(position >= shots.unsqueeze(1)) & (position < (shots + queries).unsqueeze(1))]
        inputs = tasks.gather(torch.cat([support_index, query_index]))
        labels = torch.arange(ways)
        return Episode(
            support_x=inputs[: support_index.numel()],
            support_y=labels.repeat_interleave(shots),
            query_x=inputs[support_index.numel() :],
            query_y=labels.repeat_interleave(queries),
            ways=ways,
        )

    def _common(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):  # resize before repeating grey: a third of the work
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        return x.contiguous()

    def __repr__(self) -> str:
        weights = ", ".join(f"{n}: {p:.2f}" for n, p in zip(self.names, self.probabilities.tolist(), strict=True))
        kind = "fixed-size" if self.variable is None else "variable-way variable-shot"
        return (
            f"MultiDomainTasks({kind}, split={self.split!r}, weights={{{weights}}}, "
            f"inputs=[{self.channels}, {self.image_size}, {self.image_size}])"
        )
