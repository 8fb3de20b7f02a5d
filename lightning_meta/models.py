"""Standard few-shot backbones: the Conv4 of MAML and Prototypical Networks, and the sinusoid MLP of MAML.

Every backbone names its last layer ``head`` (so ANIL can adapt ``head.*`` only), keeps no running statistics and
no other state that a forward pass changes, and works under :func:`torch.func.vmap` and :mod:`torch.func`
transforms, including the second-order gradients of MAML.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta._checks import positive_int


def records_config(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: instances keep ``init_config``, the ``class_path`` and ``init_args`` that rebuild them.

    Learners save a backbone that has it as that small config instead of a pickled module, so that
    ``Learner.load_from_checkpoint(path)`` rebuilds the backbone with ``weights_only`` loading and without the code
    that built it (the same form LightningCLI writes). Decorate your own backbones to get the same.

    Example:
        >>> @records_config
        ... class Tiny(nn.Module):
        ...     def __init__(self, width: int = 3) -> None:
        ...         super().__init__()
        ...         self.layer = nn.Linear(width, 1)
        >>> Tiny(width=5).init_config["init_args"]
        {'width': 5}
    """
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self) is cls:  # a subclass without the decorator records nothing rather than something wrong
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            init_args = {k: list(v) if isinstance(v, tuple) else v for k, v in bound.arguments.items() if k != "self"}
            self.__dict__["init_config"] = {
                "class_path": f"{cls.__module__}.{cls.__qualname__}",
                "init_args": init_args,
            }

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def _functorch_active() -> bool:
    """Whether a :mod:`torch.func` transform (vmap, grad, ...) is running; True if torch cannot tell."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if active is None else bool(active())


class BatchStatNorm2d(nn.Module):
    """Batch normalisation that always uses the statistics of the batch it sees, with a learned affine map.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, mean and (biased) variance per channel over the batch and
    spatial dimensions of the input. This is the batch norm of the MAML reference implementation inside the inner
    loop: *transductive*. There are no running statistics, so training and evaluation (``.eval()``) compute the
    same thing: a support set is normalised with its own statistics, and so is a query set, whose predictions
    therefore depend on the other query examples of the task. The module holds no buffers and never changes
    state in ``forward``, which keeps inner loops pure.

    Why not ``nn.BatchNorm2d(track_running_stats=False)``: under :func:`torch.func.vmap`, PyTorch's native batch
    norm gives wrong second-order gradients (measured on torch 2.14 in float64: relative errors of 2e-3 to 3e-2
    after one inner step and up to 4e-2 after five, against a per-task loop; first order is exact). Under a
    :mod:`torch.func` transform this module therefore normalises with plain tensor operations, whose derivatives
    of every order are right; outside the transforms it calls the fused native kernel (several times faster on a
    CPU), which is exact there. Both compute the same function. ``tests/test_models.py`` guards both facts.

    Args:
        num_features: number of channels ``C`` of the ``[N, C, H, W]`` input.
        eps: added to the variance for numerical stability.

    Example:
        >>> import torch
        >>> norm = BatchStatNorm2d(3)
        >>> y = norm(torch.randn(8, 3, 5, 5) * 4 + 2)
        >>> y.mean(dim=(0, 2, 3)).abs().max() < 1e-5, y.shape
        (tensor(True), torch.Size([8, 3, 5, 5]))
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        positive_int("BatchStatNorm2d", "num_features", num_features)
        if not eps > 0:
            raise ValueError(f"BatchStatNorm2d: eps must be positive, got {eps!r}.")
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (``[N, C, H, W]``) with its own per-channel statistics, then scale and shift."""
        if not _functorch_active():
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, momentum=0.0, eps=self.eps)
        # Statistics in float32 at least, as the native kernel keeps them (mixed precision feeds half inputs).
        wide = x if x.dtype not in (torch.float16, torch.bfloat16) else x.float()
        var, mean = torch.var_mean(wide, dim=(0, 2, 3), correction=0, keepdim=True)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1)
        return ((wide - mean) * scale + self.bias.view(1, -1, 1, 1)).to(x.dtype)

    def extra_repr(self) -> str:
        """Size and eps, as ``nn.BatchNorm2d`` shows them."""
        return f"{self.num_features}, eps={self.eps}"


class ConvBlock(nn.Sequential):
    """One Conv4 block: 3x3 convolution (padding 1, no bias), :class:`BatchStatNorm2d`, ReLU, 2x2 max-pool.

    The convolution has no bias: the normalisation that follows subtracts it again.

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm = BatchStatNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)


@records_config
class Conv4(nn.Module):
    """The four-block convolutional backbone of MAML (Finn et al., 2017) and Prototypical Networks (Snell et al., 2017).

    Four :class:`ConvBlock` s (3x3 conv, batch-statistics norm, ReLU, 2x2 max-pool) halve the image four times
    (rounding down), so ``image_size`` ``s`` gives ``hidden * (s // 16) ** 2`` features: 28x28 Omniglot gives
    ``hidden`` features (64 with ``hidden=64``), 84x84 mini-ImageNet ``25 * hidden`` (1600 with 64, 800 with 32,
    the width MAML used on mini-ImageNet). With ``out_features`` a linear layer named ``head`` maps the
    features to logits; without it the model returns the flattened features (as ProtoNets use it).

    Batch norm uses the statistics of each batch, in training and evaluation alike (see
    :class:`BatchStatNorm2d`); parameter names are ``body.{0..3}.conv.weight``, ``body.{0..3}.norm.weight``,
    ``body.{0..3}.norm.bias`` and ``head.weight``, ``head.bias``.

    Memory format: on the CPU, images of 64 pixels or more run through the blocks in channels-last (NHWC) layout,
    outside ``torch.func`` transforms. Measured with ``python benchmarks/channels_last.py`` (MAML meta-step, 5-way
    1-shot, 15 queries, meta-batch 4, one thread): 1.34x faster second order and 1.50x first order for Conv4-32 on
    84x84 with the per-task loop; no gain at 28x28 (0.96-1.02x), and under vmap, where the whole model in NHWC was
    0.81x, it cannot apply anyway (inside the transform), hence the rule.
    The outputs are the same up to float rounding; ``channels_last=False`` turns it off, ``True`` forces it.

    Args:
        in_channels: channels of the input images (1 for Omniglot, 3 for mini-ImageNet).
        hidden: channels of every block (64 in ProtoNets and MAML on Omniglot, 32 in MAML on mini-ImageNet).
        out_features: number of outputs of the linear head (the ways of a classifier), or ``None`` for no head.
        image_size: height and width of the (square) input images, at least 16; fixes ``feature_dim``.
        channels_last: ``None`` (the rule above), ``True`` or ``False``.

    Example:
        >>> import torch
        >>> model = Conv4(in_channels=1, hidden=64, out_features=5, image_size=28)
        >>> model.feature_dim, model(torch.randn(10, 1, 28, 28)).shape
        (64, torch.Size([10, 5]))
        >>> Conv4(in_channels=3, hidden=32, image_size=84).feature_dim
        800
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        out_features: int | None = None,
        image_size: int = 28,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        if channels_last not in (None, True, False):
            raise ValueError(f"Conv4: channels_last must be None, True or False, got {channels_last!r}.")
        for name, value in (("in_channels", in_channels), ("hidden", hidden), ("image_size", image_size)):
            positive_int("Conv4", name, value)
        if image_size < 16:
            raise ValueError(
                f"Conv4: image_size must be at least 16 (four 2x2 max-pools halve it four times), got {image_size}."
            )
        if out_features is not None and (
            isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 1
        ):
            raise ValueError(f"Conv4: out_features must be a positive integer or None, got {out_features!r}.")
        self.body = nn.Sequential(*(ConvBlock(in_channels if i == 0 else hidden, hidden) for i in range(4)))
        self.feature_dim = hidden * (image_size // 16) ** 2
        self.head = nn.Linear(self.feature_dim, out_features) if out_features is not None else None
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``[N, in_channels, image_size, image_size]`` to logits ``[N, out_features]`` (or features)."""
        if self._use_channels_last(x):
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.body(x).flatten(1)
        return features if self.head is None else self.head(features)

    def _use_channels_last(self, x: Tensor) -> bool:
        if self.channels_last is False or x.dim() != 4 or _functorch_active():
            return False
        return bool(self.channels_last) or (x.device.type == "cpu" and min(x.shape[-2:]) >= 64)


@records_config
class MLP(nn.Module):
    """Fully connected ReLU network; the defaults are the sinusoid regressor of MAML (1-40-40-1, Finn et al., 2017).

    Hidden layers form ``body`` (``body.0``, ``body.2``, ... are the linear layers), the last linear layer is
    ``head``.

    Args:
        in_features: input features.
        hidden: widths of the hidden layers, in order (may be empty: a linear model).
        out_features: outputs of the ``head``.

    Example:
        >>> import torch
        >>> model = MLP()
        >>> model(torch.randn(10, 1)).shape, [name for name, _ in model.named_parameters()][-2:]
        (torch.Size([10, 1]), ['head.weight', 'head.bias'])
    """

    def __init__(self, in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1) -> None:
        super().__init__()
        widths = [in_features, *hidden, out_features]
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(
                "MLP: in_features, every hidden width and out_features must be positive integers, got "
                f"in_features={in_features!r}, hidden={tuple(hidden)!r}, out_features={out_features!r}."
            )
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-2], widths[1:-1], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-2], out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``[N, in_features]`` to ``[N, out_features]``."""
        return self.head(self.body(x))


class ResidualBlock(nn.Module):
    """One ResNet12 block: three 3x3 conv-norm-LeakyReLU(0.1) layers, a 1x1 conv-norm shortcut, a 2x2 max-pool.

    The last activation comes after the shortcut is added.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        norm: ``"batch_stat"`` (:class:`BatchStatNorm2d`) or ``"batch"`` (``nn.BatchNorm2d`` with running
            statistics), see :class:`ResNet12`.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: str = "batch_stat") -> None:
        super().__init__()

        def norm_layer() -> nn.Module:
            return BatchStatNorm2d(out_channels) if norm == "batch_stat" else nn.BatchNorm2d(out_channels)

        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm1 = norm_layer()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = norm_layer()
        self.conv3 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm3 = norm_layer()
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), norm_layer())
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``[N, in_channels, H, W]`` to ``[N, out_channels, H // 2, W // 2]``."""
        out = F.leaky_relu(self.norm1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.norm2(self.conv2(out)), 0.1)
        out = self.norm3(self.conv3(out))
        return self.pool(F.leaky_relu(out + self.shortcut(x), 0.1))


@records_config
class ResNet12(nn.Module):
    """The ResNet-12 of modern few-shot learning (MetaOptNet, Lee et al., 2019; TADAM, Oreshkin et al., 2018).

    Four :class:`ResidualBlock` s of widths 64-160-320-640, each three 3x3 conv-norm-LeakyReLU(0.1) layers with a
    1x1 conv-norm shortcut and a 2x2 max-pool, so the image is halved four times (rounding down). Input
    ``[N, in_channels, image_size, image_size]``; output (without ``head``) ``[N, feature_dim]``: the flattened
    final map, ``640 * (image_size // 16) ** 2`` features (16000 for 84x84 mini-ImageNet as in MetaOptNet,
    2560 for 32x32 CIFAR-FS), or ``640`` with ``avg_pool=True`` (global average pooling, as most ProtoNet/FEAT
    ResNet-12s use). DropBlock is not included. With ``out_features`` a linear layer named ``head`` maps the
    features to logits (for ANIL/MAML-style learners).

    Normalisation (``norm``):
        * ``"batch_stat"`` (default): :class:`BatchStatNorm2d`, the module convention of this file: no running
          statistics, every batch normalised with its own statistics in training and evaluation (transductive,
          like MAML), vmap-safe in both modes with correct higher-order gradients. Needed by gradient-based
          learners that adapt the tasks of a meta-batch under :func:`torch.func.vmap`.
        * ``"batch"``: ``nn.BatchNorm2d`` with running statistics, as MetaOptNet and most metric-based methods train
          it: evaluation is inductive (each query is embedded alone). For metric learners (ProtoNet, MatchingNet,
          R2D2), which never vmap their backbone. Under vmap it works in ``eval()`` mode only (training mode
          updates the running statistics in place).

    Weights are initialised as in MetaOptNet: Kaiming-normal (fan-out, leaky ReLU) convolutions, unit norm scale.

    Args:
        in_channels: channels of the input images (3 for mini-ImageNet, 1 for Omniglot).
        channels: widths of the four blocks.
        out_features: number of outputs of the linear head, or ``None`` for no head (a feature extractor).
        image_size: height and width of the (square) input, at least 16; fixes ``feature_dim`` when not pooled.
        avg_pool: average the final map over space (``feature_dim = channels[-1]``) instead of flattening it.
        norm: ``"batch_stat"`` or ``"batch"``, see above.

    Raises:
        ValueError: for a non-positive size or width, an ``image_size`` below 16, or an unknown ``norm``.

    Example:
        >>> import torch
        >>> model = ResNet12(in_channels=3, channels=(8, 16, 24, 32), image_size=32)
        >>> model.feature_dim, model(torch.randn(4, 3, 32, 32)).shape
        (128, torch.Size([4, 128]))
        >>> ResNet12(image_size=84).feature_dim, ResNet12(avg_pool=True).feature_dim
        (16000, 640)
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (64, 160, 320, 640),
        out_features: int | None = None,
        image_size: int = 84,
        avg_pool: bool = False,
        norm: str = "batch_stat",
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        for name, value in (("in_channels", in_channels), ("image_size", image_size)):
            positive_int("ResNet12", name, value)
        if len(channels) != 4 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"ResNet12: channels must be four positive integers, got {channels!r}.")
        if image_size < 16:
            raise ValueError(
                f"ResNet12: image_size must be at least 16 (four 2x2 max-pools halve it four times), got {image_size}."
            )
        if norm not in ("batch_stat", "batch"):
            raise ValueError(f"ResNet12: norm must be one of ('batch_stat', 'batch'), got {norm!r}.")
        if out_features is not None and (
            isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 1
        ):
            raise ValueError(f"ResNet12: out_features must be a positive integer or None, got {out_features!r}.")
        widths = (in_channels, *channels)
        self.body = nn.Sequential(*(ResidualBlock(widths[i], widths[i + 1], norm=norm) for i in range(4)))
        self.avg_pool = avg_pool
        self.feature_dim = channels[-1] * (1 if avg_pool else (image_size // 16) ** 2)
        self.head = nn.Linear(self.feature_dim, out_features) if out_features is not None else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``[N, in_channels, S, S]`` to ``[N, feature_dim]`` features (or ``[N, out_features]`` logits)."""
        features = self.body(x)
        features = features.mean(dim=(2, 3)) if self.avg_pool else features.flatten(1)
        return features if self.head is None else self.head(features)
