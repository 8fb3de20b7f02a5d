"""learn2learn 0.2.0, installed by scripts/install_learn2learn.sh, builds, imports and works with this torch.

learn2learn is the reference implementation other tests compare against. It is not a hard requirement
(its last release needs its Cython regenerated on Python >= 3.11), so outside CI a missing install skips
these tests with the command to run; in CI (CI=true) a missing install is an error (tests/helpers/learn2learn.py).
"""

import torch

from tests.helpers.learn2learn import l2l, needs_l2l

pytestmark = needs_l2l


def test_learn2learn_is_version_0_2_0_with_compiled_data_modules():
    assert l2l.__version__ == "0.2.0"
    from learn2learn.data import meta_dataset, task_dataset, transforms

    # The Cython modules must be the extensions built from the regenerated C, not a pure-Python fallback.
    for module in (meta_dataset, task_dataset, transforms):
        assert module.__file__.endswith(".so"), module.__file__


def test_learn2learn_taskset_samples_a_remapped_5_way_2_shot_task():
    from learn2learn.data.transforms import KShots, LoadData, NWays, RemapLabels

    n_classes, per_class, n_features = 10, 5, 3
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    # Each example's first feature is its class id, so the sampled data can be checked against the labels.
    features = torch.randn(n_classes * per_class, n_features)
    features[:, 0] = labels.float()
    meta = l2l.data.MetaDataset(torch.utils.data.TensorDataset(features, labels))
    assert sorted(meta.labels) == list(range(n_classes))
    assert all(len(meta.labels_to_indices[c]) == per_class for c in range(n_classes))

    ways, shots = 5, 2
    # Taskset is the class; TaskDataset is its deprecated alias in 0.2.0.
    assert issubclass(l2l.data.TaskDataset, l2l.data.Taskset)
    tasks = l2l.data.Taskset(
        meta,
        task_transforms=[NWays(meta, n=ways), KShots(meta, k=shots), LoadData(meta), RemapLabels(meta)],
        num_tasks=4,
    )
    x, y = tasks.sample()

    assert x.shape == (ways * shots, n_features)
    assert y.shape == (ways * shots,)
    assert sorted(y.tolist()) == sorted(list(range(ways)) * shots)
    original = x[:, 0].long()
    assert original.unique().numel() == ways
    # RemapLabels is a bijection from the sampled classes onto 0..ways-1.
    mapping = {}
    for old, new in zip(original.tolist(), y.tolist(), strict=True):
        assert mapping.setdefault(old, new) == new
    assert sorted(mapping.values()) == list(range(ways))


def test_learn2learn_maml_clone_adapt_matches_a_hand_written_second_order_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    lr = 0.1
    maml = l2l.algorithms.MAML(model, lr=lr, first_order=False)
    support_x, query_x = torch.randn(4, 3), torch.randn(4, 3)
    before = [p.detach().clone() for p in model.parameters()]

    learner = maml.clone()
    learner.adapt(learner(support_x).pow(2).mean())
    learner(query_x).pow(2).mean().backward()

    # Independent reference: one SGD step written out with autograd, keeping the graph (second order).
    weight, bias = (p.detach().clone().requires_grad_() for p in before)
    grad_w, grad_b = torch.autograd.grad((support_x @ weight.T + bias).pow(2).mean(), (weight, bias), create_graph=True)
    adapted_w, adapted_b = weight - lr * grad_w, bias - lr * grad_b
    meta_grad_w, meta_grad_b = torch.autograd.grad((query_x @ adapted_w.T + adapted_b).pow(2).mean(), (weight, bias))

    torch.testing.assert_close(learner.module.weight, adapted_w)
    torch.testing.assert_close(learner.module.bias, adapted_b)
    torch.testing.assert_close(model.weight.grad, meta_grad_w)
    torch.testing.assert_close(model.bias.grad, meta_grad_b)
    # clone/adapt leaves the meta-parameters themselves untouched.
    for param, original in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(param.detach(), original, rtol=0, atol=0)
