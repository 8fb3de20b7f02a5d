"""ResNet12: the MetaOptNet architecture and sizes, and vmap over tasks equal to a loop over them."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from lightning_meta.models import BatchStatNorm2d, ResNet12

SMALL = (4, 6, 8, 10)  # the real widths are (64, 160, 320, 640); the structure is the same


def test_resnet12_has_the_metaoptnet_structure_and_parameter_count():
    model = ResNet12()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs].count((3, 3)) == 12 and [c.kernel_size for c in convs].count((1, 1)) == 4
    assert [block.conv3.out_channels for block in model.body] == [64, 160, 320, 640]
    assert sum(p.numel() for p in model.parameters()) == 12_424_320  # MetaOptNet's ResNet-12: 12.4M
    assert all(isinstance(m, BatchStatNorm2d) for m in model.modules() if "norm" in type(m).__name__.lower())
    assert not list(model.buffers())


@pytest.mark.parametrize(
    ("kwargs", "size", "features"),
    [({"image_size": 84}, 84, 16000), ({"image_size": 32}, 32, 2560), ({"avg_pool": True}, 84, 640),
     ({"image_size": 28, "in_channels": 1}, 28, 640), ({"out_features": 5, "avg_pool": True}, 40, 5)],
)  # fmt: skip
def test_resnet12_output_features_match_the_documented_sizes(kwargs, size, features):
    model = ResNet12(**kwargs)
    x = torch.randn(1, kwargs.get("in_channels", 3), size, size)
    with torch.no_grad():
        assert model(x).shape == (1, features)
    if "out_features" not in kwargs:
        assert model.feature_dim == features


def test_resnet12_under_vmap_over_two_tasks_equals_the_loop_batch_stat_norm():
    torch.manual_seed(0)
    model = ResNet12(channels=SMALL, image_size=16, out_features=3).double()
    x = torch.randn(2, 5, 3, 16, 16, dtype=torch.float64)  # 2 tasks of 5 images
    loop = torch.stack([model(task) for task in x])
    torch.testing.assert_close(vmap(model)(x), loop)
    # per-task weights, as the gradient-based learners adapt them
    params = {k: torch.stack([v, v + 0.01 * torch.randn_like(v)]) for k, v in model.named_parameters()}
    batched = vmap(lambda p, xt: functional_call(model, p, (xt,)))(params, x)
    looped = torch.stack([functional_call(model, {k: v[i] for k, v in params.items()}, (x[i],)) for i in range(2)])
    torch.testing.assert_close(batched, looped)


def test_resnet12_gradients_under_vmap_equal_the_loop():
    torch.manual_seed(0)
    model = ResNet12(channels=SMALL, image_size=16, out_features=3, avg_pool=True).double()
    params = dict(model.named_parameters())
    x, y = torch.randn(2, 6, 3, 16, 16, dtype=torch.float64), torch.randint(3, (2, 6))

    def loss(p, xt, yt):
        return nn.functional.cross_entropy(functional_call(model, p, (xt,)), yt)

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(2):
        single = grad(loss)(params, x[i], y[i])
        for name in params:
            torch.testing.assert_close(batched[name][i], single[name])


def test_resnet12_with_running_batch_norm_vmaps_in_eval_mode():
    torch.manual_seed(0)
    model = ResNet12(channels=SMALL, image_size=16, norm="batch")
    model(torch.randn(8, 3, 16, 16))  # one training step's statistics
    model.eval()
    x = torch.randn(2, 5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vmap(model)(x), torch.stack([model(task) for task in x]))
        # inductive: an image's features do not depend on the rest of the batch
        torch.testing.assert_close(model(x[0])[:1], model(x[0, :1]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"norm": "layer"}, r"norm must be one of \('batch_stat', 'batch'\), got 'layer'"),
     ({"image_size": 8}, r"image_size must be at least 16.*got 8"),
     ({"channels": (64, 160, 320)}, r"channels must be four positive integers, got \(64, 160, 320\)"),
     ({"out_features": 0}, r"out_features must be a positive integer or None, got 0")],
)  # fmt: skip
def test_resnet12_rejects_bad_arguments_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet12(**kwargs)
