"""Voxel-wise out-of-distribution scores (all: higher = more anomalous).

Every function takes a tensor with a class (or query) axis ``dim`` and returns the score with that axis reduced
(kept as size 1 with ``keepdim=True``). The default ``dim=1`` suits batch-first tensors ``(B, C, *spatial)``; use
``dim=0`` for per-sample channel-first tensors ``(C, *spatial)`` as found in MONAI post-transforms. Scores are
computed in float32.

Inputs of the class-based scores are either probabilities (``input_type="probabilities"``, the default for every
function, e.g. the mask transformer's ``Z``; then logits are taken as ``l = log(max(p, eps))``) or logits
(``input_type="logits"``, e.g. a plain DynUNet; then ``p = softmax(l)``).

- ``maxquery``: ``-max_n R`` from the query affinities ``R``, or the network's anomaly map ``A`` passed through;
- ``msp``: ``1 - max_k p_k``;
- ``max_logit``: ``-max_k l_k``;
- ``energy``: ``-T logsumexp_k (l_k / T)``;
- ``entropy``: ``-sum_k p_k log p_k``;
- ``rba``: ``-sum_k tanh(l_k)`` (Rejected by All).

With probabilities as input, ``l = log p`` makes ``max_logit`` a monotone transform of ``msp`` (same ranking, same
AUROC) and ``energy`` (with ``T = 1``) equal to ``-log sum_k p_k = 0`` everywhere: a constant, uninformative score.
These follow the definitions used for the baselines; ``energy`` is only meaningful on unnormalised logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "CLASS_INPUT_TYPES",
    "SCORE_FUNCTIONS",
    "energy",
    "entropy",
    "max_logit",
    "maxquery",
    "msp",
    "ood_score",
    "rba",
]

CLASS_INPUT_TYPES = ("probabilities", "logits")
_EPS = 1e-6


def _check(input_type: str, allowed: tuple[str, ...]) -> None:
    if input_type not in allowed:
        raise ValueError(f"input_type must be one of {allowed}, got {input_type!r}.")


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype != torch.float64 else x


def _logits(x: torch.Tensor, input_type: str, dim: int, eps: float) -> torch.Tensor:
    _check(input_type, CLASS_INPUT_TYPES)
    x = _as_float(x)
    return torch.log(x.clamp_min(eps)) if input_type == "probabilities" else x


def _probs(x: torch.Tensor, input_type: str, dim: int) -> torch.Tensor:
    _check(input_type, CLASS_INPUT_TYPES)
    x = _as_float(x)
    return x if input_type == "probabilities" else torch.softmax(x, dim=dim)


def maxquery(x: torch.Tensor, dim: int = 1, input_type: str = "affinity", keepdim: bool = True) -> torch.Tensor:
    """MaxQuery score: negative maximal affinity of a voxel to any query (cluster centre).

    Args:
        x: affinities ``R`` with the query axis at ``dim`` (``input_type="affinity"``), or the network's anomaly
            map ``A = -max_n R`` with a size-1 channel axis at ``dim`` (``input_type="anomaly"``, passed through).
        dim: query / channel axis.
        input_type: ``"affinity"`` or ``"anomaly"``.
        keepdim: keep ``dim`` as a size-1 axis.
    """
    _check(input_type, ("affinity", "anomaly"))
    x = _as_float(x)
    if input_type == "anomaly":
        if x.shape[dim] != 1:
            raise ValueError(f"an anomaly map has one channel along dim {dim}, got shape {tuple(x.shape)}.")
        return x if keepdim else x.squeeze(dim)
    return -x.amax(dim=dim, keepdim=keepdim)


def msp(
    x: torch.Tensor, dim: int = 1, input_type: str = "probabilities", keepdim: bool = True, eps: float = _EPS
) -> torch.Tensor:
    """Maximum softmax probability score ``1 - max_k p_k``."""
    return 1.0 - _probs(x, input_type, dim).amax(dim=dim, keepdim=keepdim)


def max_logit(
    x: torch.Tensor, dim: int = 1, input_type: str = "probabilities", keepdim: bool = True, eps: float = _EPS
) -> torch.Tensor:
    """Max-logit score ``-max_k l_k`` (``l = log p`` for probabilities)."""
    return -_logits(x, input_type, dim, eps).amax(dim=dim, keepdim=keepdim)


def energy(
    x: torch.Tensor,
    dim: int = 1,
    input_type: str = "probabilities",
    keepdim: bool = True,
    eps: float = _EPS,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Energy score ``-T logsumexp_k(l_k / T)`` (constant 0 for probabilities with ``T = 1``, see module notes)."""
    logits = _logits(x, input_type, dim, eps)
    return -temperature * torch.logsumexp(logits / temperature, dim=dim, keepdim=keepdim)


def entropy(
    x: torch.Tensor, dim: int = 1, input_type: str = "probabilities", keepdim: bool = True, eps: float = _EPS
) -> torch.Tensor:
    """Predictive entropy ``-sum_k p_k log p_k`` (natural log; ``0 log 0 = 0``)."""
    if input_type == "logits":
        x = _as_float(x)
        log_p = torch.log_softmax(x, dim=dim)
        return -(log_p.exp() * log_p).sum(dim=dim, keepdim=keepdim)
    p = _probs(x, input_type, dim)
    return -torch.special.xlogy(p, p).sum(dim=dim, keepdim=keepdim)


def rba(
    x: torch.Tensor, dim: int = 1, input_type: str = "probabilities", keepdim: bool = True, eps: float = _EPS
) -> torch.Tensor:
    """Rejected-by-All score ``-sum_k tanh(l_k)`` (``l = log p`` for probabilities)."""
    return -torch.tanh(_logits(x, input_type, dim, eps)).sum(dim=dim, keepdim=keepdim)


SCORE_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "maxquery": maxquery,
    "msp": msp,
    "max_logit": max_logit,
    "energy": energy,
    "entropy": entropy,
    "rba": rba,
}


def ood_score(
    x: torch.Tensor, method: str, dim: int = 1, input_type: str | None = None, keepdim: bool = True
) -> torch.Tensor:
    """Dispatch to one of :data:`SCORE_FUNCTIONS` by name.

    Args:
        x: input tensor (see the individual functions).
        method: ``"maxquery"``, ``"msp"``, ``"max_logit"``, ``"energy"``, ``"entropy"`` or ``"rba"``.
        dim: class / query axis.
        input_type: see the individual functions; ``None`` uses the function's default.
        keepdim: keep ``dim`` as a size-1 axis.
    """
    if method not in SCORE_FUNCTIONS:
        raise ValueError(f"unknown OOD score {method!r}; choose from {sorted(SCORE_FUNCTIONS)}.")
    kwargs = {"dim": dim, "keepdim": keepdim}
    if input_type is not None:
        kwargs["input_type"] = input_type
    return SCORE_FUNCTIONS[method](x, **kwargs)
