"""The ESP module of ESPNet (Mehta et al., ECCV 2018, arXiv:1803.06815) and its small building blocks.

Paper mechanism (Sec. 3.1, Fig. 1): an *efficient spatial pyramid* factorises a standard
convolution into

* **reduce**: a point-wise (1x1) convolution that projects the N input channels to
  d = N / K channels;
* **split and transform**: K parallel 3x3 dilated convolutions on that reduced map, with
  dilation rates 2^(k-1), k = 1..K (K = 5: rates 1, 2, 4, 8, 16), each seeing a larger
  effective receptive field at the cost of a 3x3 kernel;
* **hierarchical feature fusion (HFF)**: before concatenation the branch outputs are added
  cumulatively, so a large-rate branch is always merged with the denser smaller-rate ones; this
  removes the gridding artifacts of a plain dilated pyramid;
* **merge**: concatenation back to N channels, an element-wise residual sum with the input
  when the shapes allow it, then BatchNorm + PReLU.

The *strided* (down-sampling) ESP module has no residual, and its reduction convolution
has stride 2.

Where we follow the authors' reference code (github sacmehta/ESPNet, ``train/Model.py``)
rather than the paper's prose:

* The strided module reduces with a 3x3 stride-2 convolution (the paper says "strided
  convolution" without a kernel size).
* Widths: d = floor(N / K); the first (rate 1) branch takes the remainder n1 = N - (K-1)d so
  the concatenation has exactly N channels.
* HFF: the rate-1 branch (width n1, which may differ from d) is concatenated as it is and the
  cumulative sums run over the other branches: ``[y1, y2, y2+y4, y2+y4+y8, y2+y4+y8+y16]``.
* No normalisation between the reduction and the dilated convolutions; no conv biases; BN
  eps 1e-3; PReLU with one slope per channel.
* Attribute names (``c1``, ``d1`` .. ``d16``, ``bn``, ``act``) are the reference's, so state
  dicts released by the authors load unchanged.

Our one deviation: a module with fewer than K output channels (only the decoder's ESP module,
whose width is the class count, when num_classes < 5) uses K = N branches, one channel each,
instead of branches with zero channels.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BN_EPS", "Conv", "CBR", "BR", "InputProjection", "SpatialPyramid", "ESP", "StridedESP",
           "pyramid_widths"]

#: BatchNorm epsilon of the reference code.
BN_EPS = 1e-3


class Conv(nn.Module):
    """A bias-free 'same'-padded convolution (the reference's ``C`` and ``CDilated``)."""

    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        pad = (kernel - 1) // 2 * dilation
        self.conv = nn.Conv2d(n_in, n_out, kernel, stride=stride, padding=pad, dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CBR(nn.Module):
    """Convolution + BatchNorm + PReLU: ESPNet's stem and its decoder's merge layer."""

    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(n_out, eps=BN_EPS)
        self.act = nn.PReLU(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class BR(nn.Module):
    """BatchNorm + PReLU, applied after every concatenation so the joined maps share one scale."""

    def __init__(self, n_out: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(n_out, eps=BN_EPS)
        self.act = nn.PReLU(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class InputProjection(nn.Module):
    """The input image down-sampled ``times`` times by 2 (input reinforcement, Sec. 3.2).

    A pyramid of 3x3 stride-2 average pools, as in the reference code; for any H it gives
    ceil(H / 2) per step, the same size as a 3x3 stride-2 padded convolution.
    """

    def __init__(self, times: int) -> None:
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool2d(3, stride=2, padding=1) for _ in range(times))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for pool in self.pool:
            x = pool(x)
        return x


def pyramid_widths(n_out: int, branches: int = 5) -> tuple[int, int, int]:
    """``(K, d, n1)``: branch count, width of branches 2..K, width of the rate-1 branch.

    d = floor(N / K) and n1 = N - (K-1) d, as in the reference code; K is lowered to N when
    N < K so that no branch is empty.
    """
    if n_out < 1 or branches < 1:
        raise ValueError(f"an ESP module needs >= 1 output channel and branch, got {n_out} and {branches}")
    k = min(branches, n_out)
    d = n_out // k
    return k, d, n_out - (k - 1) * d


class SpatialPyramid(nn.Module):
    """Reduce, split into K dilated 3x3 branches (rates 1, 2, 4, ...), fuse hierarchically, concatenate."""

    def __init__(self, n_in: int, n_out: int, *, reduce_kernel: int, stride: int, branches: int = 5) -> None:
        super().__init__()
        k, d, n1 = pyramid_widths(n_out, branches)
        self.n_in, self.n_out, self.d, self.n1 = n_in, n_out, d, n1
        self.rates: tuple[int, ...] = tuple(2**i for i in range(k))
        self.c1 = Conv(n_in, d, reduce_kernel, stride=stride)
        for i, rate in enumerate(self.rates):
            self.add_module(f"d{rate}", Conv(d, n1 if i == 0 else d, 3, dilation=rate))

    def branches(self) -> list[Conv]:
        """The dilated convolutions, in rate order."""
        return [getattr(self, f"d{rate}") for rate in self.rates]

    def pyramid(self, x: torch.Tensor) -> torch.Tensor:
        """The HFF concatenation, before residual and normalisation: ``[y1, y2, y2+y4, ...]``."""
        reduced = self.c1(x)
        outs = [branch(reduced) for branch in self.branches()]
        fused, total = [outs[0]], None
        for y in outs[1:]:
            total = y if total is None else total + y
            fused.append(total)
        return torch.cat(fused, 1)


class ESP(SpatialPyramid):
    """The ESP module: 1x1 reduction, dilated pyramid with HFF, residual sum, BN + PReLU.

    ``residual`` defaults to "when the shapes allow it" (N_in == N_out), as the paper says;
    the reference's ``DilatedParllelResidualBlockB``.
    """

    def __init__(self, n_in: int, n_out: int, residual: bool | None = None, branches: int = 5) -> None:
        super().__init__(n_in, n_out, reduce_kernel=1, stride=1, branches=branches)
        if residual is None:
            residual = n_in == n_out
        if residual and n_in != n_out:
            raise ValueError(f"a residual ESP module needs n_in == n_out, got {n_in} and {n_out}")
        self.residual = residual
        self.bn = BR(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pyramid(x)
        if self.residual:
            y = x + y
        return self.bn(y)


class StridedESP(SpatialPyramid):
    """The down-sampling ESP module: 3x3 stride-2 reduction, no residual (``DownSamplerB``)."""

    residual = False

    def __init__(self, n_in: int, n_out: int, branches: int = 5) -> None:
        super().__init__(n_in, n_out, reduce_kernel=3, stride=2, branches=branches)
        self.bn = nn.BatchNorm2d(n_out, eps=BN_EPS)
        self.act = nn.PReLU(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pyramid(x)))
