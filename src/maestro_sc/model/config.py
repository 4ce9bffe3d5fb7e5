"""Every hyper-parameter of MAESTRO in one dataclass, and the named presets.

The ``"paper"`` preset is the paper's appendix F.2 setting; where the paper is silent (projection
head size, weight decay, gradient clipping, OT epsilon) the value is the authors' public code's
or a documented choice (``docs/model.md``). ``"cpu"`` and ``"gpu"`` are smaller settings for a
laptop and one GPU; they add prototype pooling (``n_prototypes=128``, readout ``"pma+proto"``,
:mod:`maestro_sc.model.prototypes`), which the benchmarks showed the paper's readout needs on
a laptop budget, and the sample-contrastive loss with a 10x learning rate for the prototypes
(``w_con=1``, ``proto_lr_scale=10``), the setting with which training measurably improves the
embedding over its untrained start (``docs/benchmarks.md``, "What training adds"). The
``"cpu"`` preset trains on 256 cells per view for 40 epochs: at the same wall time, twice the
steps on half the cells learned more than 512 cells for 20 epochs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_CHOICES = {
    "decoder": ("queries", "paper"),
    "decoder_block": ("sab", "isab"),
    "mask_mode": ("block", "random", "none"),
    "readout": ("pma", "pma+mass", "pma+proto", "codebook", "pma+codebook"),
    "embed_with": ("teacher", "student"),
    "dtype": ("float32", "bfloat16", "float16"),
}


@dataclass
class MaestroConfig:
    """Hyper-parameters of the MAESTRO model and its training.

    Parameters
    ----------
    n_markers
        ``d``, the number of markers per cell; 0 until the data is seen.
    latent_dim
        ``D``, width of every attention block and of the sample embedding ``z``.
    ff_dim
        Hidden width of the SwiGLU feed-forward in every block (paper F.2 "hidden size").
    n_heads
        Attention heads (``latent_dim`` must be divisible by it).
    n_inducing
        ``m``, learned inducing points per ISAB (paper eq. 5).
    n_isab
        Number of ISAB blocks in the encoder (paper eq. 8: 3).
    n_prototypes
        ``K`` of prototype pooling (:mod:`maestro_sc.model.prototypes`, not in the paper): the
        cells' soft counts over ``K`` learned marker profiles, projected and added to ``z``.
        0 (paper) leaves it out.
    n_codebook
        ``K`` of the codebook readout (not in the paper; 0 = none): after training, k-means
        with ``K`` centres is fitted on the teacher encoder's input-layer cell states (the
        learned ``Linear(d -> D)``), and a sample's embedding is its centred log-ratio
        composition over these cell states (readouts ``"codebook"`` and ``"pma+codebook"``).
    decoder
        ``"queries"`` (learned Gaussian queries, any set size) or ``"paper"`` (PMA with
        ``n_sub`` learned seeds, paper eq. 9 and F.2).
    decoder_depth
        Number of SAB (or ISAB) blocks after the decoder's first block (paper: 3).
    decoder_block
        ``"sab"`` (paper) or ``"isab"`` (linear in the set size, for large ``n_sub`` on CPU).
    n_sub
        Cells in the student's random subset of a sample (paper: 10,000).
    mask_rates
        One masked view of the student subset per rate (paper: 0.2, 0.4, 0.6, 0.8).
    mask_mode
        ``"block"`` (NRBM, paper 3.2.1), ``"random"`` or ``"none"``.
    ot_epsilon
        Entropic regularisation of the Sinkhorn loss, relative to the mean cost of each pair.
    ot_max_iter, ot_tol
        Sinkhorn iteration cap and stopping tolerance on the L1 marginal error.
    ot_debiased
        Use the debiased Sinkhorn divergence ``OT(x,y) - (OT(x,x) + OT(y,y)) / 2``.
    head_dim, head_hidden, head_bottleneck
        Projection head: ``K`` output logits, MLP hidden width and bottleneck width.
    student_temp, teacher_temp
        Softmax temperatures of the distillation loss (paper F.2: 0.1 and 0.07).
    center_momentum
        Momentum of the running centre of the teacher logits (DINO: 0.9).
    ema_momentum, ema_final
        Teacher EMA momentum at the first step and at the last; cosine in between, constant when
        equal (paper: 0.999).
    w_rec, w_sd
        Weights of the reconstruction and the distillation loss.
    w_con, con_temp
        Weight and temperature of the sample-contrastive loss (not in the paper; 0 = off): each
        student view's embedding must pick out the teacher embedding of its own sample among
        those of the batch (InfoNCE on standardised, L2-normalised embeddings, gradient also into
        the prototypes through the composition).
    proto_lr_scale
        Learning rate of the prototypes and their temperature, relative to ``lr``.
    view_shift, view_scale
        Augmentation of the student views: a random per-marker offset (std ``view_shift``) and
        log-gain (std ``view_scale``), in standardised units, drawn per view; 0 = off (paper).
    teacher_max_cells
        The teacher encodes at most this many random cells of a sample (``None``: all, streamed).
    chunk_size
        Cells per chunk in streamed encoding (memory ``O(chunk * (m + ff_dim))``).
    readout
        ``"pma"`` (paper: the embedding is the PMA output ``z``) or ``"pma+mass"`` (``z``
        concatenated with the mean attention of the cells over the last ISAB's inducing points,
        per head, a composition-aware readout) or ``"pma+proto"`` (``z`` concatenated with the
        prototype composition; needs ``n_prototypes > 0``), ``"codebook"`` (the composition over
        the codebook of learned cell states alone; needs ``n_codebook > 0``) or
        ``"pma+codebook"`` (``z`` concatenated with it).
    mass_log
        For ``"pma+mass"``: centred log-proportions (``True``) or proportions (``False``).
    embed_with
        Encoder used for the embedding: the EMA ``"teacher"`` or the ``"student"``.
    dtype
        Compute precision of the encoder on GPU (autocast); Sinkhorn always runs in float32.
    lr, lr_final, weight_decay
        AdamW learning rate, cosine-annealed from ``lr`` to ``lr_final``, and weight decay.
    batch_size
        Samples per optimisation step.
    step_parts
        Sub-batches a training step is computed in (each sample's losses are computed within its
        sub-batch; the distillation centre and the contrastive loss see the whole batch). On a
        CPU with at least ``step_parts`` torch threads the parts run side by side in threads,
        forward and backward. ``None`` (default): 2 on a CPU with 2 or more torch threads, else
        1. The parts draw their random numbers from their own seeds, so a run is reproducible
        for a given number of parts; changing it changes the random draws, not the method.
    max_epochs, steps_per_epoch
        Training length; ``steps_per_epoch=None`` means ``n_samples // batch_size``.
    min_steps
        Small cohorts get more steps per epoch (the samples are cycled) so that training
        makes at least this many optimiser steps.
    grad_clip
        Gradient norm clip (``None``: none).
    min_cells
        Samples with fewer cells are skipped by training.

    Examples
    --------
    >>> from maestro_sc.model.config import MaestroConfig
    >>> cfg = MaestroConfig(n_markers=30, latent_dim=32)
    >>> MaestroConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    n_markers: int = 0
    latent_dim: int = 64
    ff_dim: int = 128
    n_heads: int = 4
    n_inducing: int = 32
    n_isab: int = 3
    n_prototypes: int = 0
    n_codebook: int = 0
    decoder: str = "queries"
    decoder_depth: int = 3
    decoder_block: str = "sab"
    n_sub: int = 1024
    mask_rates: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    mask_mode: str = "block"
    ot_epsilon: float = 0.02
    ot_max_iter: int = 100
    ot_tol: float = 1e-3
    ot_debiased: bool = False
    head_dim: int = 256
    head_hidden: int = 256
    head_bottleneck: int = 64
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    center_momentum: float = 0.9
    ema_momentum: float = 0.99
    ema_final: float = 1.0
    w_rec: float = 1.0
    w_sd: float = 1.0
    w_con: float = 0.0
    con_temp: float = 0.1
    proto_lr_scale: float = 1.0
    view_shift: float = 0.0
    view_scale: float = 0.0
    teacher_max_cells: int | None = None
    chunk_size: int = 16384
    readout: str = "pma"
    mass_log: bool = True
    embed_with: str = "teacher"
    dtype: str = "float32"
    lr: float = 1e-3
    lr_final: float = 1e-6
    weight_decay: float = 1e-3
    batch_size: int = 8
    step_parts: int | None = None
    max_epochs: int = 30
    steps_per_epoch: int | None = None
    min_steps: int = 0
    grad_clip: float | None = 5.0
    min_cells: int = 20

    def __post_init__(self) -> None:
        self.mask_rates = tuple(float(r) for r in self.mask_rates)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent hyper-parameter and the fix."""
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"MaestroConfig.{name}={getattr(self, name)!r} is not one of {allowed}."
                )
        if self.n_markers < 0:
            raise ValueError(f"n_markers must be >= 0 (0 = not set yet), got {self.n_markers}.")
        if self.latent_dim % self.n_heads:
            raise ValueError(
                f"latent_dim={self.latent_dim} is not divisible by n_heads={self.n_heads}; "
                "choose a latent_dim that is a multiple of n_heads."
            )
        if not self.mask_rates or any(not 0.0 <= r < 1.0 for r in self.mask_rates):
            raise ValueError(
                f"mask_rates={self.mask_rates} must be a non-empty tuple of rates in [0, 1)."
            )
        for name in (
            "latent_dim",
            "ff_dim",
            "n_heads",
            "n_inducing",
            "n_isab",
            "n_sub",
            "head_dim",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"MaestroConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.n_prototypes < 0:
            raise ValueError(f"n_prototypes must be >= 0, got {self.n_prototypes}.")
        if self.readout == "pma+proto" and self.n_prototypes < 1:
            raise ValueError(
                "readout='pma+proto' needs prototype pooling: set n_prototypes >= 1 "
                "(e.g. 64), or choose readout='pma'."
            )
        if self.n_codebook < 0:
            raise ValueError(f"n_codebook must be >= 0, got {self.n_codebook}.")
        if self.readout in ("codebook", "pma+codebook") and self.n_codebook < 1:
            raise ValueError(
                f"readout={self.readout!r} needs a codebook: set n_codebook >= 2 (e.g. 128), "
                "or choose readout='pma'."
            )
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}.")
        if not 0.0 <= self.ema_momentum <= 1.0 or not 0.0 <= self.ema_final <= 1.0:
            raise ValueError("ema_momentum and ema_final must lie in [0, 1].")
        if self.w_con < 0 or self.con_temp <= 0 or self.proto_lr_scale < 0:
            raise ValueError("w_con and proto_lr_scale must be >= 0, con_temp > 0.")
        if self.step_parts is not None and (
            isinstance(self.step_parts, bool)
            or not isinstance(self.step_parts, int)
            or self.step_parts < 1
        ):
            raise ValueError(
                f"step_parts must be None (automatic) or an int >= 1, got {self.step_parts!r}."
            )
        if self.ot_epsilon <= 0:
            raise ValueError(f"ot_epsilon must be > 0, got {self.ot_epsilon}.")

    @property
    def embedding_dim(self) -> int:
        """Width ``E`` of a sample embedding.

        ``D``, plus ``heads * m`` for ``"pma+mass"`` or ``K`` for ``"pma+proto"`` /
        ``"pma+codebook"``; ``n_codebook`` for ``"codebook"``.
        """
        if self.readout == "codebook":
            return self.n_codebook
        extra = {
            "pma+mass": self.n_heads * self.n_inducing,
            "pma+proto": self.n_prototypes,
            "pma+codebook": self.n_codebook,
        }.get(self.readout, 0)
        return self.latent_dim + extra

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary of every field (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["mask_rates"] = list(self.mask_rates)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaestroConfig:
        """Build a config from :meth:`to_dict` output; unknown keys raise ``TypeError``."""
        _check_keys(d)
        return cls(**d)

    def replace(self, **overrides: Any) -> MaestroConfig:
        """Copy with some fields changed; unknown keys raise ``TypeError``."""
        _check_keys(overrides)
        return dataclasses.replace(self, **overrides)


def _check_keys(d: dict[str, Any]) -> None:
    valid = [f.name for f in dataclasses.fields(MaestroConfig)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise TypeError(f"Unknown MaestroConfig keys {unknown}. Valid keys: {valid}.")


PRESETS: dict[str, dict[str, Any]] = {
    # Paper appendix F.2. Head size, weight decay and clipping are not in the paper: the
    # authors' public code's values. Every difference from the paper (plan mass, epsilon,
    # masking on standardised cells, ...) is listed in docs/model.md, "The paper preset vs
    # the paper".
    "paper": dict(
        latent_dim=1024,
        ff_dim=2048,
        n_heads=4,
        n_inducing=2500,
        n_isab=3,
        decoder="paper",
        decoder_depth=3,
        decoder_block="sab",
        n_sub=10_000,
        mask_rates=(0.2, 0.4, 0.6, 0.8),
        mask_mode="block",
        head_dim=256,
        head_hidden=2048,
        head_bottleneck=256,
        student_temp=0.1,
        teacher_temp=0.07,
        ema_momentum=0.999,
        ema_final=0.999,
        chunk_size=8192,
        lr=1e-4,
        lr_final=1e-8,
        weight_decay=1e-3,
        batch_size=1,
        max_epochs=324,
    ),
    "gpu": dict(
        latent_dim=256,
        ff_dim=512,
        n_heads=4,
        n_inducing=128,
        decoder="queries",
        n_sub=4096,
        head_dim=1024,
        head_hidden=512,
        head_bottleneck=128,
        ema_momentum=0.996,
        ema_final=1.0,
        chunk_size=65536,
        n_prototypes=128,
        readout="pma+proto",
        w_con=1.0,
        proto_lr_scale=10.0,
        lr=3e-4,
        lr_final=1e-6,
        batch_size=8,
        max_epochs=100,
    ),
    "cpu": dict(
        latent_dim=64,
        ff_dim=128,
        n_heads=4,
        n_inducing=32,
        decoder="queries",
        decoder_block="isab",
        n_sub=256,
        head_dim=256,
        head_hidden=256,
        head_bottleneck=64,
        ema_momentum=0.99,
        ema_final=1.0,
        chunk_size=4096,
        n_prototypes=128,
        readout="pma+proto",
        w_con=1.0,
        proto_lr_scale=10.0,
        lr=1e-3,
        lr_final=1e-5,
        batch_size=8,
        max_epochs=40,
        min_steps=200,
    ),
}


def preset(name: str, **overrides: Any) -> MaestroConfig:
    """Return a named preset, optionally with some fields overridden.

    Parameters
    ----------
    name
        ``"paper"``, ``"gpu"``, ``"cpu"`` or ``"auto"`` (``"gpu"`` when CUDA is available).
    **overrides
        Fields to change; unknown names raise ``TypeError`` listing the valid ones.

    Returns
    -------
    A new :class:`MaestroConfig`.

    Examples
    --------
    >>> from maestro_sc.model.config import preset
    >>> preset("cpu", n_markers=30, latent_dim=32).latent_dim
    32
    """
    if name == "auto":
        import torch

        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {[*PRESETS, 'auto']}.")
    _check_keys(overrides)
    fields = {**PRESETS[name], **overrides}
    if fields.get("readout") == "pma+proto" and fields.get("n_prototypes") == 0:
        if "readout" not in overrides:
            fields["readout"] = "pma"  # prototype pooling switched off: the paper's readout
    return MaestroConfig(**fields)
