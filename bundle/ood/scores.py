"""Voxel-wise out-of-distribution scores (all: higher = more anomalous).

Every function takes a tensor with a class (or query) axis ``dim`` and returns the score with that axis reduced
(kept as size 1 with ``keepdim=True``). The default ``dim=1`` suits batch-first tensors ``(B, C, *spatial)``; use
``dim=0`` for per-sample channel-first tensors ``(C, *spatial)`` as found in MONAI post-transforms. Scores are
computed in float32.

Inputs of the class-based scores are either probabilities (``input_type="probabilities"``, the default for every
function, e.g. the mask transformer's ``Z``; then logits are taken as ``l = log(max(p, eps))``) or logits
(``input_type="logits"``, e.g. a plain DynUNet; then ``p = softmax(l)``).

- ``maxquery``: ``-max_n R`` from the query affinities ``R``, or the network's anomaly map ``A`` passed through
  (the mask transformer's ``A`` adds its class uncertainty ``w s H(Z)`` where ``anomaly_uncertainty_weight > 0``);
- ``msp``: ``1 - max_k p_k``;
- ``max_logit``: ``-max_k l_k``;
- ``energy``: ``-T logsumexp_k (l_k / T)``;
- ``entropy``: ``-sum_k p_k log p_k``;
- ``rba``: ``-sum_k tanh(l_k)`` (Rejected by All).

With probabilities as input, ``l = log p`` makes ``max_logit`` a monotone transform of ``msp`` (same ranking, same
AUROC) and ``energy`` (with ``T = 1``) equal to ``-log sum_k p_k = 0`` everywhere: a constant, uninformative score.
These follow the definitions used for the baselines; ``energy`` is only meaningful on unnormalised logits.

Registry: every score is an :class:`OODScore` in :data:`SCORES` that declares the one network output it consumes
(:data:`SCORE_INPUTS`): ``"probabilities"`` (``msp``), ``"logits"`` (``max_logit``, ``energy``, ``entropy``,
``rba``), ``"affinities"`` (the query affinities ``R``) or ``"anomaly"`` (the anomaly map ``A = -max_n R``;
``maxquery``). Consumers such as the evaluation handler iterate :data:`SCORES` and hand each score the output it
declares, so a new score is one :func:`register_score` call. The two class outputs are derived from each other by
:func:`class_inputs` (``p = softmax(l)``, ``l = log(max(p, eps))``, the conversions above), so a class score runs
on any network with a class output; a score consuming affinities or an anomaly map needs a network that gives them.
The built-ins reproduce their functions exactly on logits (the evaluation configs' input); ``entropy`` consumes the
logits, so on a probability output it is the entropy of the renormalised ``max(p, eps)``, within about ``3e-5``
nats of ``-sum_k p_k log p_k`` where ``p`` holds exact zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

__all__ = [
    "CLASS_INPUT_TYPES",
    "QUERY_INPUT_TYPES",
    "SCORES",
    "SCORE_FUNCTIONS",
    "SCORE_INPUTS",
    "OODScore",
    "class_inputs",
    "energy",
    "entropy",
    "max_logit",
    "maxquery",
    "msp",
    "ood_score",
    "rba",
    "register_score",
]

CLASS_INPUT_TYPES = ("probabilities", "logits")
QUERY_INPUT_TYPES = ("affinities", "anomaly")
SCORE_INPUTS = CLASS_INPUT_TYPES + QUERY_INPUT_TYPES
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
"""The built-in score functions, each taking any of its accepted inputs through ``input_type``."""


@dataclass(frozen=True)
class OODScore:
    """A registered voxel OOD score and the network output it consumes.

    Attributes:
        name: the key of the score in reports (``pixel_ood.<name>``, ``case_ood.<name>``, ``score_<name>``).
        fn: ``fn(x, dim, keepdim) -> Tensor``: the score (higher = more anomalous) of ``x``, the output named by
            ``consumes`` with its class / query axis at ``dim``, that axis reduced (kept as size 1 with
            ``keepdim=True``).
        consumes: one of :data:`SCORE_INPUTS`.
        description: one line for humans.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    consumes: str
    description: str = ""

    def __call__(self, x: torch.Tensor, dim: int = 1, keepdim: bool = True) -> torch.Tensor:
        """The score of ``x`` (the output this score consumes)."""
        return self.fn(x, dim=dim, keepdim=keepdim)


SCORES: dict[str, OODScore] = {}
"""Name -> score, in registration order (the order of the report rows)."""


def register_score(name: str, fn: Callable[..., torch.Tensor], consumes: str, description: str = "") -> OODScore:
    """Add a score to :data:`SCORES`, so that the evaluation computes and reports it.

    Args:
        name: a new, non-empty report key.
        fn: ``fn(x, dim, keepdim)``, see :class:`OODScore`.
        consumes: the network output ``fn`` takes, one of :data:`SCORE_INPUTS`.
        description: one line for humans.

    Returns:
        the registered score.

    Raises:
        ValueError: the name is empty or taken, ``consumes`` is unknown or ``fn`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an OOD score needs a non-empty name, got {name!r}.")
    if name in SCORES:
        raise ValueError(f"an OOD score named {name!r} is already registered (consumes {SCORES[name].consumes!r}).")
    if consumes not in SCORE_INPUTS:
        raise ValueError(f"OOD score {name!r} consumes {consumes!r}; it must be one of {SCORE_INPUTS}.")
    if not callable(fn):
        raise ValueError(f"OOD score {name!r}: fn must be callable, got {type(fn).__name__}.")
    score = OODScore(name, fn, consumes, description)
    SCORES[name] = score
    return score


def _anomaly(x: torch.Tensor, dim: int = 1, keepdim: bool = True) -> torch.Tensor:
    return maxquery(x, dim=dim, input_type="anomaly", keepdim=keepdim)


# Each built-in consumes the output on which it reproduces the numbers of its function; entropy takes the logits
# (log-softmax, stable and exact on the logits the evaluation configs hand over).
register_score(
    "maxquery",
    _anomaly,
    "anomaly",
    "the network's anomaly map A passed through: -max_n R (+ w s H(Z), see MaskTransformer)",
)
register_score("msp", partial(msp, input_type="probabilities"), "probabilities", "1 - max_k p_k")
register_score("max_logit", partial(max_logit, input_type="logits"), "logits", "-max_k l_k")
register_score("energy", partial(energy, input_type="logits"), "logits", "-logsumexp_k l_k")
register_score("entropy", partial(entropy, input_type="logits"), "logits", "-sum_k p_k log p_k")
register_score("rba", partial(rba, input_type="logits"), "logits", "-sum_k tanh(l_k) (Rejected by All)")


def class_inputs(x: torch.Tensor, input_type: str, dim: int = 1, eps: float = _EPS) -> dict[str, torch.Tensor]:
    """Both class outputs of a network from the one it gives: ``{"probabilities": p, "logits": l}``.

    Args:
        x: the class output (float32 unless float64), class axis at ``dim``.
        input_type: what ``x`` is, ``"probabilities"`` (then ``l = log(max(p, eps))``) or ``"logits"`` (then
            ``p = softmax(l)``).
        dim: class axis.
        eps: floor of ``p`` before the log.
    """
    return {"probabilities": _probs(x, input_type, dim), "logits": _logits(x, input_type, dim, eps)}


def _to_input(x: torch.Tensor, input_type: str, consumes: str, dim: int) -> torch.Tensor:
    """``x`` (an ``input_type`` output) as the ``consumes`` output, if that can be derived from it."""
    input_type = "affinities" if input_type == "affinity" else input_type
    if input_type == consumes:
        return x
    if input_type in CLASS_INPUT_TYPES and consumes in CLASS_INPUT_TYPES:
        return class_inputs(x, input_type, dim)[consumes]
    if input_type == "affinities" and consumes == "anomaly":
        return maxquery(x, dim=dim, input_type="affinity")
    raise ValueError(f"a score consuming {consumes!r} cannot be computed from {input_type!r}.")


def ood_score(
    x: torch.Tensor, method: str, dim: int = 1, input_type: str | None = None, keepdim: bool = True
) -> torch.Tensor:
    """Compute one score of :data:`SCORES` by name, deriving the output it consumes from ``x`` where possible.

    Args:
        x: input tensor.
        method: a name in :data:`SCORES` (built in: ``"maxquery"``, ``"msp"``, ``"max_logit"``, ``"energy"``,
            ``"entropy"``, ``"rba"``).
        dim: class / query axis.
        input_type: what ``x`` is: ``"probabilities"`` or ``"logits"`` (converted into each other),
            ``"affinities"`` (``"affinity"``; gives the anomaly map ``-max_n R``) or ``"anomaly"``. ``None``:
            ``"probabilities"`` for a score of class outputs, ``"affinities"`` for a score of query outputs.
        keepdim: keep ``dim`` as a size-1 axis.

    Raises:
        ValueError: unknown score, or the score's input cannot be derived from ``input_type``.
    """
    if method not in SCORES:
        raise ValueError(f"unknown OOD score {method!r}; choose from {sorted(SCORES)}.")
    score = SCORES[method]
    if input_type is None:
        input_type = "probabilities" if score.consumes in CLASS_INPUT_TYPES else "affinities"
    return score(_to_input(_as_float(x), input_type, score.consumes, dim), dim=dim, keepdim=keepdim)
