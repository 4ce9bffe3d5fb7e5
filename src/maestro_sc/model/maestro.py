"""The MAESTRO model (paper 3.2, Algorithm 3): student, EMA teacher, decoder, losses.

:class:`Maestro` holds the marker scaler, the student encoder + projection head, the decoder and
the teacher copies, and gives the framework-free training step (:meth:`Maestro.training_loss`)
and the deterministic, streamed embedding (:meth:`Maestro.encode`). All public methods take raw
(already arcsinh-transformed) cells and standardise them inside.

The readouts are written in their own modules and bound as methods in the class body, so they
stay :class:`Maestro`'s own methods: the embeddings (:meth:`~Maestro.encode`,
:meth:`~Maestro.encode_batch`, :meth:`~Maestro.cell_scores`, ...) in
:mod:`~maestro_sc.model.readout`, the codebook readout (:meth:`~Maestro.fit_codebook`, ...) in
:mod:`~maestro_sc.model.codebook`. This module keeps the network, the scaler and the training
step.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import codebook, readout
from ._parts import ThreadedParts, split_sizes
from .config import MaestroConfig
from .decoder import build_decoder
from .distill import (
    ProjectionHead,
    contrastive_loss,
    distillation_loss,
    ema_momentum_at,
    ema_update,
    entropy,
    teacher_distribution,
    update_center,
)
from .encoder import SetEncoder
from .masking import multi_rate_masks, rand, randn
from .sinkhorn import sinkhorn_cost

_WHICH = ("teacher", "student")


class Maestro(nn.Module):
    """MAESTRO: masked set encoder with self-distillation (paper 3.2).

    Parameters
    ----------
    config
        Hyper-parameters; ``config.n_markers`` must be set (> 0).

    Examples
    --------
    >>> import torch
    >>> from maestro_sc.model import Maestro, preset
    >>> cfg = preset("cpu", n_markers=5, latent_dim=16, ff_dim=32, n_inducing=4, n_sub=64,
    ...              n_prototypes=8)
    >>> model = Maestro(cfg)
    >>> model.encode(torch.randn(1000, 5)).shape  # z (16) and the composition (8)
    torch.Size([24])
    >>> out = model.training_loss(torch.randn(2, 64, 5), [torch.randn(300, 5)] * 2)
    >>> [k for k in ("loss", "rec", "sd", "kl") if k in out]
    ['loss', 'rec', 'sd', 'kl']
    """

    def __init__(self, config: MaestroConfig) -> None:
        super().__init__()
        if config.n_markers < 1:
            raise ValueError(
                "config.n_markers is 0: set it to the number of markers of the data, e.g. "
                "preset('cpu', n_markers=adata.n_vars)."
            )
        self.config = config
        d, dim = config.n_markers, config.latent_dim
        self.register_buffer("marker_mean", torch.zeros(d))
        self.register_buffer("marker_std", torch.ones(d))
        self.register_buffer("center", torch.zeros(config.head_dim))
        self.encoder = SetEncoder(
            d,
            dim,
            config.n_heads,
            config.ff_dim,
            config.n_inducing,
            config.n_isab,
            config.n_prototypes,
        )
        self.head = ProjectionHead(dim, config.head_hidden, config.head_bottleneck, config.head_dim)
        self.decoder = build_decoder(config)
        self.teacher_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        if config.n_codebook:
            self.register_buffer("codebook", torch.zeros(config.n_codebook, dim))

    # -- scaling ----------------------------------------------------------------------------

    def set_scaler(self, mean: Tensor, std: Tensor) -> None:
        """Store per-marker mean and std of the training cells; std 0 becomes 1."""
        mean, std = torch.as_tensor(mean), torch.as_tensor(std)
        d = self.config.n_markers
        if mean.shape != (d,) or std.shape != (d,):
            raise ValueError(
                f"set_scaler needs mean and std of shape ({d},), got {tuple(mean.shape)} and "
                f"{tuple(std.shape)}; compute them per marker over the training cells."
            )
        self.marker_mean.copy_(mean)
        self.marker_std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def standardize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per marker, on the model's device, float32."""
        x = torch.as_tensor(x, device=self.marker_mean.device, dtype=self.marker_mean.dtype)
        return (x - self.marker_mean) / self.marker_std

    @torch.no_grad()
    def init_prototypes(self, cells: Tensor, random_state: int = 0) -> None:
        """Start the prototypes of student and teacher at a k-means++ draw of raw ``cells``.

        Does nothing without prototype pooling (``config.n_prototypes == 0``).

        Examples
        --------
        >>> import torch
        >>> from maestro_sc.model import Maestro, MaestroConfig
        >>> cfg = MaestroConfig(n_markers=3, latent_dim=8, ff_dim=16, n_inducing=4,
        ...                     n_prototypes=6)
        >>> model = Maestro(cfg)
        >>> model.init_prototypes(torch.randn(100, 3))
        >>> bool(torch.equal(model.encoder.proto.prototypes, model.teacher_encoder.proto.prototypes))
        True
        """
        if self.encoder.proto is None:
            return
        self.encoder.proto.initialize(self.standardize(cells), random_state)
        self.teacher_encoder.proto.load_state_dict(self.encoder.proto.state_dict())

    # -- codebook readout (model/codebook.py) -----------------------------------------------

    fit_codebook = codebook.fit_codebook
    codebook_composition = codebook.codebook_composition
    codebook_assignments = codebook.codebook_assignments
    _assign = codebook._assign
    _codebook_counts = codebook._codebook_counts

    # -- embedding (the public readouts: model/readout.py) ----------------------------------

    encode = readout.encode
    encode_batch = readout.encode_batch
    encode_batch_z = readout.encode_batch_z
    cell_scores = readout.cell_scores
    composition = readout.composition
    prototype_assignments = readout.prototype_assignments
    _prototypes = readout._prototypes

    def _encoder(self, which: str | None) -> SetEncoder:
        which = self.config.embed_with if which is None else which
        if which not in _WHICH:
            raise ValueError(f"which={which!r} is not one of {_WHICH}.")
        return self.teacher_encoder if which == "teacher" else self.encoder

    def _cells(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.config.n_markers or x.shape[0] == 0:
            raise ValueError(
                f"Expected cells of shape (n >= 1, {self.config.n_markers}), got "
                f"{tuple(x.shape)}; pass one sample's cells with the model's markers in order."
            )
        return self.standardize(x).unsqueeze(0)

    def _autocast(self):
        device = self.marker_mean.device.type
        if self.config.dtype == "float32" or device != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(device, dtype=getattr(torch, self.config.dtype))

    def _readout(self, z: Tensor, mass: Tensor | None, comp: Tensor | None = None) -> Tensor:
        """The embedding of pooled vectors ``z`` ``(B, D)``.

        ``z``, or ``z`` with the attention ``mass`` over the inducing points, or ``z`` with the
        prototype composition ``comp``.
        """
        if comp is not None:
            return torch.cat([z.float(), comp.float()], dim=1)
        if mass is None:
            return z.float()
        if self.config.mass_log:
            log_mass = mass.float().clamp_min(1e-12).log()
            mass = log_mass - log_mass.mean(dim=-1, keepdim=True)  # centred log-ratio per head
        return torch.cat([z.float(), mass.float().flatten(1)], dim=1)

    @torch.no_grad()
    def reconstruct(
        self, x: Tensor, rate: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mask one set at ``rate`` and reconstruct it with the student (for plots).

        Returns the standardised cells ``(n, d)``, the mask ``(n,)`` and the reconstruction
        ``(n_out, d)`` in standardised space (``n_out = n``, or ``n_sub`` for ``"paper"``).

        Examples
        --------
        >>> import torch
        >>> from maestro_sc.model import Maestro, MaestroConfig
        >>> model = Maestro(MaestroConfig(n_markers=3, latent_dim=8, ff_dim=16, n_inducing=4))
        >>> cells, mask, recon = model.reconstruct(torch.randn(30, 3), 0.5)
        >>> int(mask.sum()), recon.shape
        (15, torch.Size([30, 3]))
        """
        cells = self._cells(x)
        mask = multi_rate_masks(cells, (rate,), self.config.mask_mode, generator)
        z = self.encoder(cells, mask)
        recon = self.decoder(z, mask, generator, mask_token=self.encoder.mask_token)
        return cells[0], mask[0], recon[0]

    # -- training ---------------------------------------------------------------------------

    def _teacher_forward(
        self, teacher_sets: Sequence[Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Teacher logits ``(B, K)`` and teacher embeddings ``(B, E)`` of the full sets."""
        cap = self.config.teacher_max_cells
        sets = []
        for cells in teacher_sets:
            if cap is not None and cells.shape[0] > cap:
                keep = rand((cells.shape[0],), generator, cells.device).argsort()[:cap]
                cells = cells[keep]
            sets.append(self._cells(cells))
        chunk, enc = self.config.chunk_size, self.teacher_encoder
        # sets of one size that fit in a chunk run as one batch; other sets that fit run one
        # by one in a single pass, and only larger ones are streamed (same results)
        sizes = {s.shape[1] for s in sets}
        groups = [torch.cat(sets)] if len(sizes) == 1 and max(sizes) <= chunk else sets
        comps, zs = [], []
        for group in groups:
            if group.shape[1] <= chunk:
                comp = None if enc.proto is None else enc.proto(group)
                zs.append(enc(group, composition=comp))
            else:
                comp = None if enc.proto is None else enc.proto.streamed(group, chunk)
                zs.append(enc.streamed(group, chunk, composition=comp))
            comps.append(comp)
        z = torch.cat(zs)
        comp = None if enc.proto is None else torch.cat(comps)
        return self.teacher_head(z), self._readout(z, None, comp)

    def _step_part(
        self,
        student_sets: Tensor,
        teacher_sets: Sequence[Tensor],
        generator: torch.Generator | None,
    ) -> list[Tensor]:
        """The per-sample part of a training step, for a batch or a sub-batch of samples.

        Returns ``[rec (B V,), student logits (B, V, K), z (B V, D)]``, the student composition
        ``(B V, P)`` where prototypes are on, then the constants ``[teacher logits (B, K),
        teacher embeddings (B, E), Sinkhorn iterations (1,)]``.
        """
        cfg = self.config
        n_views = len(cfg.mask_rates)
        cells = self.standardize(student_sets)
        masks = multi_rate_masks(cells, cfg.mask_rates, cfg.mask_mode, generator)
        views = self._jitter(cells.repeat_interleave(n_views, dim=0), generator)
        comp = None if self.encoder.proto is None else self.encoder.proto(views, masks)
        z = self.encoder(views, masks, composition=comp)
        recon = self.decoder(z, masks, generator, mask_token=self.encoder.mask_token)
        rec, ot_iters = sinkhorn_cost(
            recon,
            views,
            cfg.ot_epsilon,
            cfg.ot_max_iter,
            cfg.ot_tol,
            cfg.ot_debiased,
            return_n_iter=True,
        )
        student_logits = self.head(z).view(student_sets.shape[0], n_views, -1)
        with torch.no_grad():
            teacher_logits, teacher_emb = self._teacher_forward(teacher_sets, generator)
        graph = [rec, student_logits, z] + ([] if comp is None else [comp])
        iters = torch.tensor([ot_iters], device=rec.device)
        return [*graph, teacher_logits.float(), teacher_emb, iters]

    def _n_step_parts(self, batch: int, device: torch.device) -> int:
        parts = self.config.step_parts
        if parts is None:
            parts = 2 if device.type == "cpu" and torch.get_num_threads() >= 2 else 1
        return max(1, min(parts, batch))

    def _step_parts(
        self,
        student_sets: Tensor,
        teacher_sets: Sequence[Tensor],
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor, Tensor]:
        """:meth:`_step_part` over the batch cut into ``config.step_parts`` sub-batches, joined.

        Each part draws from its own generator, seeded from ``generator``. On a CPU with at least
        as many torch threads as parts, the parts run side by side in threads
        (:class:`~maestro_sc.model._parts.ThreadedParts`); the result is the same as computing
        them one after the other. Returns ``rec, student logits, z, composition (or None),
        teacher logits, teacher embeddings, Sinkhorn iterations per part``.
        """
        device = student_sets.device
        parts = self._n_step_parts(student_sets.shape[0], device)
        if parts == 1:
            out = self._step_part(student_sets, teacher_sets, generator)
        else:
            gen_device = generator.device if generator is not None else device
            seeds = torch.randint(0, 2**62, (parts,), generator=generator, device=gen_device)
            calls, start = [], 0
            for size, seed in zip(split_sizes(student_sets.shape[0], parts), seeds.tolist()):
                part_gen = torch.Generator(device=gen_device).manual_seed(seed)
                calls.append(
                    functools.partial(
                        self._step_part,
                        student_sets[start : start + size],
                        teacher_sets[start : start + size],
                        part_gen,
                    )
                )
                start += size
            n_graph = 3 if self.encoder.proto is None else 4
            threads = torch.get_num_threads()
            if device.type == "cpu" and torch.is_grad_enabled() and threads >= parts:
                params = [p for p in self.parameters() if p.requires_grad]
                out = list(ThreadedParts.apply(calls, threads // parts, n_graph, *params))
            else:
                results = [call() for call in calls]
                out = [torch.cat(t) for t in zip(*results)]
        if self.encoder.proto is None:
            out.insert(3, None)
        return tuple(out)

    def training_loss(
        self,
        student_sets: Tensor,
        teacher_sets: Sequence[Tensor],
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """One MAESTRO training step's losses (paper Algorithm 3, steps 3-9).

        The student subsets are masked at every rate of ``config.mask_rates`` (one batch of
        ``B * V`` views), encoded by the student, decoded, and compared with the whole
        standardised subset by the Sinkhorn loss; the teacher encodes each sample's
        ``teacher_sets`` cells (capped at ``config.teacher_max_cells``), and the student's
        projected views are distilled towards it. Updates the teacher centre (no grad). With
        ``config.step_parts`` above 1 the per-sample work is done in sub-batches (side by side
        on a CPU), joined before the distillation and contrastive terms. The caller
        back-propagates ``out["loss"]``, steps the optimiser and calls :meth:`update_teacher`.

        Parameters
        ----------
        student_sets
            Raw cells ``(B, n_sub, d)``: one random subset per sample.
        teacher_sets
            ``B`` tensors ``(n_i, d)``: each sample's cells for the teacher.
        generator
            Random generator for masks, decoder queries and teacher subsampling.

        Returns
        -------
        ``loss`` (with grad), ``rec``, ``sd``, ``z_std`` (mean over dimensions of the std of
        student ``z`` across the batch's views), ``teacher_entropy`` (of the centred, sharpened
        teacher distribution, nats), ``teacher_entropy_frac`` (the same over its maximum
        ``log K``), ``kl`` (``sd`` minus the teacher entropy: the part of the distillation loss
        the student can still lower), ``ot_iters``; with ``w_con > 0`` also ``con`` and
        ``con_acc`` (:func:`~maestro_sc.model.distill.contrastive_loss`).

        Examples
        --------
        >>> import torch
        >>> from maestro_sc.model import Maestro, MaestroConfig
        >>> model = Maestro(MaestroConfig(n_markers=3, latent_dim=8, ff_dim=16, n_inducing=4,
        ...                               n_sub=32, head_dim=16))
        >>> out = model.training_loss(torch.randn(2, 32, 3), [torch.randn(100, 3)] * 2)
        >>> out["loss"].backward()
        """
        cfg = self.config
        if student_sets.ndim != 3 or student_sets.shape[-1] != cfg.n_markers:
            raise ValueError(
                f"student_sets must be (B, n, {cfg.n_markers}), got {tuple(student_sets.shape)}."
            )
        if len(teacher_sets) != student_sets.shape[0]:
            raise ValueError(
                f"Got {len(teacher_sets)} teacher sets for {student_sets.shape[0]} student "
                "sets; pass one teacher set per sample."
            )
        n_views, batch = len(cfg.mask_rates), student_sets.shape[0]
        rec, student_logits, z, comp, teacher_logits, teacher_emb, ot_iters = self._step_parts(
            student_sets, teacher_sets, generator
        )
        with torch.no_grad():
            teacher_entropy = entropy(
                teacher_distribution(teacher_logits, self.center, cfg.teacher_temp)
            )
        sd = distillation_loss(
            student_logits.float(), teacher_logits, self.center, cfg.student_temp, cfg.teacher_temp
        )
        update_center(self.center, teacher_logits, cfg.center_momentum)
        rec = rec.mean()
        loss = cfg.w_rec * rec + cfg.w_sd * sd
        out = {}
        if cfg.w_con > 0:
            student_emb = self._readout(z, None, comp).view(batch, n_views, -1)
            con, con_acc = contrastive_loss(student_emb, teacher_emb.float(), cfg.con_temp)
            loss = loss + cfg.w_con * con
            out = {"con": con.detach(), "con_acc": con_acc}
        return {
            "loss": loss,
            **out,
            "rec": rec.detach(),
            "sd": sd.detach(),
            "z_std": z.detach().float().std(dim=0).mean(),
            "teacher_entropy": teacher_entropy,
            "teacher_entropy_frac": teacher_entropy / math.log(cfg.head_dim),
            "kl": sd.detach() - teacher_entropy,
            "ot_iters": ot_iters.max().float(),
        }

    @torch.no_grad()
    def reconstruction_floor(
        self, teacher_sets: Sequence[Tensor], generator: torch.Generator | None = None
    ) -> Tensor:
        """The reconstruction loss a perfect model would still pay.

        It is the Sinkhorn loss between two disjoint random subsets of ``n_sub`` cells of the
        same sample (same ``epsilon``): each sample's cells are split in two random halves and
        ``n_sub`` cells are drawn from each (with replacement when a half is smaller). Returns
        the mean over samples; the training loss ``rec`` can only approach it.

        Examples
        --------
        >>> import torch
        >>> from maestro_sc.model import Maestro, MaestroConfig
        >>> model = Maestro(MaestroConfig(n_markers=3, latent_dim=8, ff_dim=16, n_inducing=4,
        ...                               n_sub=32))
        >>> float(model.reconstruction_floor([torch.randn(200, 3)] * 2)) > 0
        True
        """
        cfg, halves = self.config, ([], [])
        for cells in teacher_sets:
            n = cells.shape[0]
            order = rand((n,), generator, cells.device).argsort()
            for half, part in zip(halves, (order[: n // 2], order[n // 2 :])):
                part = part if len(part) else order
                pick = (rand((cfg.n_sub,), generator, cells.device) * len(part)).long()
                half.append(self.standardize(cells[part[pick]]))
        value = sinkhorn_cost(
            torch.stack(halves[0]),
            torch.stack(halves[1]),
            cfg.ot_epsilon,
            cfg.ot_max_iter,
            cfg.ot_tol,
            cfg.ot_debiased,
        )
        return value.mean()

    def _jitter(self, views: Tensor, generator: torch.Generator | None) -> Tensor:
        """Random per-view, per-marker gain and offset of the student views.

        Their sizes are ``view_shift`` and ``view_scale`` (off in the paper preset).

        Staining and batch effects move whole markers of a sample; with masking as the only
        augmentation, such offsets identify a sample and are the cheapest thing for the
        distillation to match. Jittering them per view, while the teacher sees the clean
        sample, makes the embedding invariant to them (a deviation, see docs/model.md).
        """
        cfg = self.config
        if cfg.view_shift <= 0 and cfg.view_scale <= 0:
            return views
        shape = (views.shape[0], 1, views.shape[2])
        gain = torch.exp(cfg.view_scale * randn(shape, generator, views.device))
        offset = cfg.view_shift * randn(shape, generator, views.device)
        return views * gain + offset

    def update_teacher(self, momentum: float) -> None:
        """EMA of every student encoder + head parameter into the teacher (paper eq. 13)."""
        ema_update(self._teacher_tensors(), self._student_tensors(), momentum)

    def _student_tensors(self) -> list[Tensor]:
        return [*self.encoder.parameters(), *self.head.parameters()]

    def _teacher_tensors(self) -> list[Tensor]:
        return [*self.teacher_encoder.parameters(), *self.teacher_head.parameters()]

    def ema_momentum_at(self, step: int, total_steps: int) -> float:
        """Teacher EMA momentum at ``step``: cosine from ``ema_momentum`` to ``ema_final``."""
        return ema_momentum_at(step, total_steps, self.config.ema_momentum, self.config.ema_final)

    def train(self, mode: bool = True) -> Maestro:
        """Set training mode; the teacher always stays in eval mode (paper 3.2.3)."""
        super().train(mode)
        self.teacher_encoder.eval()
        self.teacher_head.eval()
        return self


def parameter_counts(config: MaestroConfig) -> dict[str, int]:
    """Trainable parameters per part (encoder, head, decoder, total), without allocating them.

    Examples
    --------
    >>> from maestro_sc.model import parameter_counts, preset
    >>> parameter_counts(preset("cpu", n_markers=30))["total"] > 0
    True
    """
    with torch.device("meta"):
        model = Maestro(config)
    parts = {"encoder": model.encoder, "head": model.head, "decoder": model.decoder}
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    counts["total"] = sum(counts.values())
    return counts
