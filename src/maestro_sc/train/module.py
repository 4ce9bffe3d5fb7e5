"""The Lightning training plan around the plain-torch :class:`~maestro_sc.model.maestro.Maestro`.

Lightning owns the loop, devices, precision, checkpoints and DDP; this module only says what one
step is (paper Algorithm 3): the model's loss, AdamW with a cosine learning
rate, and the EMA teacher update after each optimiser step.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from ..model.distill import ema_momentum_at
from ..model.maestro import Maestro

#: The reconstruction floor (:meth:`Maestro.reconstruction_floor`) is logged every this many
#: steps (it costs about a quarter of the step's Sinkhorn time).
FLOOR_EVERY = 10

#: Metrics of ``Maestro.training_loss`` kept in the training history.
HISTORY_KEYS = (
    "loss",
    "rec",
    "sd",
    "kl",
    "con",
    "con_acc",
    "z_std",
    "teacher_entropy",
    "teacher_entropy_frac",
    "ot_iters",
)


def make_optimizer(net: Maestro, fused: bool = True) -> torch.optim.AdamW:
    """AdamW over the trainable weights, the prototypes in their own group.

    The prototypes (and their temperature) learn at ``config.proto_lr_scale`` times the rate.
    ``fused`` uses torch's one-kernel AdamW where every weight is on a CPU or CUDA device (4x
    faster than the per-tensor loop for the ``cpu`` preset's 222 tensors on 2 cores; the same
    update to float round-off).
    """
    cfg = net.config
    proto = net.encoder.proto
    own = set() if proto is None else {id(proto.prototypes), id(proto.log_tau)}
    params = [p for p in net.parameters() if p.requires_grad and id(p) not in own]
    groups = [{"params": params}]
    if own:
        groups.append(
            {
                "params": [proto.prototypes, proto.log_tau],
                "lr": cfg.lr * cfg.proto_lr_scale,
                "weight_decay": cfg.weight_decay,
            }
        )
    devices = {p.device.type for group in groups for p in group["params"]}
    fused = fused and devices <= {"cpu", "cuda"}
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


class MaestroTrainingPlan(pl.LightningModule):
    """Training plan: loss, optimiser, cosine schedule, EMA teacher and the history table."""

    def __init__(self, net: Maestro, total_steps: int, random_state: int = 0) -> None:
        super().__init__()
        self.net = net
        self.total_steps = max(1, int(total_steps))
        self.random_state = int(random_state)
        self.history: list[dict] = []
        proto = net.encoder.proto
        # prototype drift is measured from where training starts
        self._proto_start = None if proto is None else proto.prototypes.detach().clone()

    def training_step(self, batch, batch_idx):
        """One step: the model's losses on a batch of sample sets, logged and recorded."""
        students, teachers = batch
        generator = torch.Generator(device=students.device)
        generator.manual_seed(self.random_state * 1_000_003 + self.global_step)
        out = self.net.training_loss(students, teachers, generator=generator)
        values = {k: float(out[k].detach()) for k in HISTORY_KEYS if k in out}
        if self.global_step % FLOOR_EVERY == 0:
            # its own generator: logging the floor does not change the training draws
            floor_gen = torch.Generator(device=students.device)
            floor_gen.manual_seed(self.random_state * 1_000_003 + self.global_step + 7)
            values["rec_floor"] = float(self.net.reconstruction_floor(teachers, floor_gen))
        if self._proto_start is not None:
            moved = self.net.encoder.proto.prototypes.detach() - self._proto_start.to(
                students.device
            )
            values["proto_drift"] = float(moved.norm(dim=1).mean())
        lr = self.optimizers().param_groups[0]["lr"]
        # The progress bar shows the losses; the full record is the history table.
        shown = {k: values[k] for k in ("loss", "rec", "sd") if k in values}
        self.log_dict(shown, prog_bar=True, on_step=True, batch_size=students.shape[0])
        if self.global_rank == 0:
            self.history.append(
                {"step": self.global_step, "epoch": self.current_epoch, "lr": lr, **values}
            )
        return out["loss"]

    def on_fit_start(self) -> None:
        """Span the schedules over the steps this process takes.

        With several devices each process takes its share of every epoch's batches, so the
        learning-rate and EMA schedules must end after ``max_epochs`` times that share, not
        after the single-device count the plan was built with.
        """
        estimated = self.trainer.estimated_stepping_batches
        if math.isfinite(estimated) and estimated > 0:
            self.total_steps = max(1, int(estimated))

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Update the EMA teacher after the optimiser step, with the scheduled momentum."""
        cfg = self.net.config
        momentum = ema_momentum_at(
            self.global_step, self.total_steps, cfg.ema_momentum, cfg.ema_final
        )
        self.net.update_teacher(momentum)

    def configure_optimizers(self):
        """AdamW (prototypes in their own group) with a per-step cosine learning rate."""
        cfg = self.net.config
        trainer = self._trainer
        # mixed precision unscales and clips the gradients itself, which a fused AdamW forbids
        full = trainer is None or str(trainer.precision) in ("32-true", "64-true", "32", "64")
        optimizer = make_optimizer(self.net, fused=full)
        floor = cfg.lr_final / cfg.lr if cfg.lr > 0 else 0.0

        def cosine(step: int) -> float:
            progress = min(1.0, step / self.total_steps)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the training history in the checkpoint."""
        checkpoint["maestro_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the training history from the checkpoint."""
        self.history = list(checkpoint.get("maestro_history", []))
