"""Self-distillation with an online tokenizer (paper 3.2.3, eq. 11-14, Algorithm 3).

The projection head turns ``z`` into ``K`` logits (DINO-style: MLP, L2-normalised bottleneck,
weight-normalised last layer). The loss is DINO's cross-entropy of the centred, sharpened teacher
distribution against the student's, ``H(p_t, p_s) = KL(p_t || p_s) + H(p_t)``; the paper writes
``KL(p_s || p_t)`` (eq. 14), the other direction (``docs/model.md``). The teacher is an EMA of
the student (eq. 13).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """DINO projection head (paper F.2 "non-linear projection head").

    ``Linear-GELU-Linear-GELU-Linear`` to a bottleneck, L2 normalise, then a weight-normalised
    ``Linear`` (unit-norm rows, no bias) to ``K`` logits.

    Examples
    --------
    >>> import torch
    >>> ProjectionHead(16, 32, 8, 10)(torch.randn(3, 16)).shape
    torch.Size([3, 10])
    """

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        self.last = nn.Parameter(torch.randn(out_dim, bottleneck) / math.sqrt(bottleneck))

    def forward(self, z: Tensor) -> Tensor:
        """Logits ``(..., K)`` of embeddings ``(..., D)``."""
        h = F.normalize(self.mlp(z), dim=-1)
        return F.linear(h, F.normalize(self.last, dim=-1))


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
) -> Tensor:
    """DINO cross-entropy between teacher and student distributions (paper eq. 14, DINO form).

    Parameters
    ----------
    student_logits
        ``(B, V, K)``: one row per masked view of each sample.
    teacher_logits
        ``(B, K)``: the teacher's logits of each full sample (no gradient).
    center
        ``(K,)`` running mean of teacher logits, subtracted before sharpening.
    student_temp, teacher_temp
        Softmax temperatures ``tau_s`` and ``tau_t``.

    Returns
    -------
    ``mean_{b, v} H(softmax((t_b - c) / tau_t), softmax(s_bv / tau_s))``, a scalar.

    Examples
    --------
    >>> import torch
    >>> s, t = torch.randn(2, 4, 10), torch.randn(2, 10)
    >>> float(distillation_loss(s, t, torch.zeros(10), 0.1, 0.07)) > 0
    True
    """
    target = teacher_distribution(teacher_logits, center, teacher_temp).unsqueeze(1)
    log_student = F.log_softmax(student_logits / student_temp, dim=-1)
    return -(target * log_student).sum(dim=-1).mean()


def teacher_distribution(teacher_logits: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """Centred, sharpened teacher distribution ``softmax((t - c) / tau_t)``, no gradient."""
    return F.softmax((teacher_logits.detach() - center) / teacher_temp, dim=-1)


@torch.no_grad()
def update_center(center: Tensor, teacher_logits: Tensor, momentum: float) -> None:
    """Update the teacher centre in place: ``c <- m c + (1 - m) mean_batch(t)``.

    The batch mean is averaged over processes when ``torch.distributed`` is initialised (as
    DINO does).
    """
    batch_mean = teacher_logits.mean(dim=0)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(batch_mean)
        batch_mean /= torch.distributed.get_world_size()
    center.mul_(momentum).add_(batch_mean, alpha=1 - momentum)


@torch.no_grad()
def ema_update(teacher: Iterable[Tensor], student: Iterable[Tensor], momentum: float) -> None:
    """``theta_t <- alpha theta_t + (1 - alpha) theta_s`` in place (paper eq. 13)."""
    teacher, student = list(teacher), list(student)
    if len(teacher) != len(student):
        raise ValueError(
            f"Teacher has {len(teacher)} tensors and student {len(student)}; build the teacher "
            "as a copy of the student."
        )
    torch._foreach_mul_(teacher, momentum)
    torch._foreach_add_(teacher, student, alpha=1 - momentum)


def ema_momentum_at(step: int, total_steps: int, base: float, final: float) -> float:
    """EMA momentum at ``step`` of ``total_steps``: cosine from ``base`` to ``final`` (DINO).

    Examples
    --------
    >>> ema_momentum_at(0, 100, 0.99, 1.0), ema_momentum_at(100, 100, 0.99, 1.0)
    (0.99, 1.0)
    """
    if total_steps <= 0:
        return base
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def entropy(p: Tensor) -> Tensor:
    """Mean Shannon entropy (nats) of the rows of a probability matrix."""
    return -(p * p.clamp_min(1e-12).log()).sum(dim=-1).mean()


def contrastive_loss(
    student_emb: Tensor, teacher_emb: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Sample-contrastive InfoNCE of student views against the batch's teacher embeddings.

    Both sides are standardised with the teacher embeddings' batch mean and standard deviation
    (no gradient), then L2-normalised, so every embedding dimension counts as it does for a
    linear probe on standardised features. Each view's positive is its own sample's teacher
    embedding; the batch's other samples are the negatives.

    Parameters
    ----------
    student_emb
        ``(B, V, E)``: the embeddings of ``V`` views of each of ``B`` samples.
    teacher_emb
        ``(B, E)``: the teacher embeddings of the full samples (no gradient).
    temperature
        Softmax temperature of the cosine similarities.

    Returns
    -------
    The mean cross-entropy (scalar) and the fraction of views whose nearest teacher embedding
    is their own sample's (no gradient).

    Examples
    --------
    >>> import torch
    >>> t = torch.randn(4, 10)
    >>> loss, acc = contrastive_loss(t.unsqueeze(1).repeat(1, 2, 1), t, 0.1)
    >>> float(acc)
    1.0
    """
    b, v, _ = student_emb.shape
    with torch.no_grad():
        mean = teacher_emb.mean(dim=0)
        std = teacher_emb.std(dim=0).clamp_min(1e-3) if b > 1 else torch.ones_like(mean)
        keys = F.normalize((teacher_emb - mean) / std, dim=-1)
    queries = F.normalize((student_emb.reshape(b * v, -1) - mean) / std, dim=-1)
    logits = queries @ keys.T / temperature
    target = torch.arange(b, device=logits.device).repeat_interleave(v)
    acc = (logits.detach().argmax(dim=1) == target).float().mean()
    return F.cross_entropy(logits, target), acc
