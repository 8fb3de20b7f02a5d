"""Two learners written on lightning_meta's API in the fewest lines it allows (README: "Write your own learner").

* ``RelationNet``, a metric method (Sung et al., "Learning to Compare: Relation Network for Few-Shot Learning",
  CVPR 2018): a learned module scores each (query, class) pair of embeddings. ``adapt`` sees the support set only
  and returns the class means; ``predict`` scores the queries against them. (The paper regresses sigmoid scores with
  a mean squared error; here the scores are logits for the base class's cross-entropy.)
* MAML with a custom inner optimizer, sign-SGD (Bernstein et al., 2018): three lines of update rule, given to any
  gradient learner as ``inner_optimizer``.

Run it: ``python examples/write_your_own_learner.py`` (about a minute on a CPU) trains both on synthetic 5-way
1-shot tasks and prints their validation accuracy against chance. ``tests/test_write_your_own_learner.py`` runs it.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from lightning_meta import MAML, EpisodicDataModule, InnerLoop, MetaLearner, SupportSet
from lightning_meta.functional import class_means, embed
from lightning_meta.inner_optim import InnerOptimizer


class RelationNet(MetaLearner):
    """Relation Networks: a learned relation module scores every (query, class mean) pair of embeddings."""

    def __init__(self, backbone: nn.Module, *, features: int, hidden: int = 16, lr: float = 1e-3) -> None:
        super().__init__(lr=lr)
        self.backbone = backbone
        self.relation = nn.Sequential(nn.Linear(2 * features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.save_learner_hyperparameters()

    def adapt(self, support: SupportSet) -> Tensor:
        return class_means(embed(self.backbone, support.support_x), support.support_y, support.ways)

    def predict(self, query_x: Tensor, state: Tensor) -> Tensor:
        queries, means = embed(self.backbone, query_x).unsqueeze(2), state.unsqueeze(1)  # [T, Q, 1, D], [T, 1, W, D]
        pairs = torch.cat(torch.broadcast_tensors(queries, means), dim=-1)  # [T, Q, W, 2D]
        return self.relation(pairs).squeeze(-1)  # [T, Q, W] logits


class SignSGD(InnerOptimizer):
    """Sign-SGD as an inner-loop update rule."""

    def update_param(self, param: Tensor, grad: Tensor, state: tuple, *, lr: Tensor | float, step: int):  # noqa: ANN201
        return param - lr * grad.sign(), state


def blobs(n_classes: int = 20, per_class: int = 20, dim: int = 8, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(n_classes, dim, generator=g)
    x = means.repeat_interleave(per_class, 0) + 0.7 * torch.randn(n_classes * per_class, dim, generator=g)
    return torch.utils.data.TensorDataset(x, torch.arange(n_classes).repeat_interleave(per_class))


def train(learner: MetaLearner, steps: int) -> float:
    """Meta-train on 5-way 1-shot blob tasks; return the validation accuracy on 100 fixed held-out tasks."""
    data = EpisodicDataModule(blobs(seed=0), blobs(seed=1), ways=5, shots=1, queries=5, tasks_per_batch=4,
                              train_episodes=4 * steps, eval_episodes=100)  # fmt: skip
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(learner, data)
    return float(trainer.callback_metrics["val/acc"])


def main(steps: int = 150) -> dict[str, float]:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))
    results = {"RelationNet": train(RelationNet(backbone, features=16, lr=3e-3), steps)}
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5))
    results["MAML with sign-SGD"] = train(
        MAML(model, inner_loop=InnerLoop(optimizer=SignSGD(), lr=0.05), lr=3e-3), steps
    )
    for name, accuracy in results.items():
        print(f"{name}: 5-way 1-shot validation accuracy {accuracy:.3f} (chance 0.200)")
    return results


if __name__ == "__main__":
    main()
