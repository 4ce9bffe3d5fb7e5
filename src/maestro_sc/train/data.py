"""Sample-set streaming for training: a dataset over the sample index and its sampler.

Every draw is seeded by ``(random_state, epoch, position)``, so an interrupted run resumed at an
epoch boundary draws exactly the subsets an uninterrupted run would, and DataLoader workers need
no shared state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .._data import SampleIndex


class SampleSetDataset(Dataset):
    """One item = one sample's student subset and teacher set, drawn fresh for each step.

    Parameters
    ----------
    index
        The sample index.
    samples
        Positions (in ``index``) of the samples to train on.
    n_sub
        Cells in a student set; smaller samples are oversampled with replacement.
    teacher_max_cells
        Cells the teacher sees (``None``: every cell of the sample).
    random_state
        Seed of every draw.
    """

    def __init__(
        self,
        index: SampleIndex,
        samples: Sequence[int],
        n_sub: int,
        teacher_max_cells: int | None,
        random_state: int,
    ) -> None:
        self.index = index
        self.samples = np.asarray(samples, dtype=np.int64)
        self.n_sub = int(n_sub)
        self.teacher_max_cells = teacher_max_cells
        self.random_state = int(random_state)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, position, j = key
        sample = int(self.samples[j])
        rng = np.random.default_rng([self.random_state, epoch, position])
        teacher = self.index.read(sample, n=self.teacher_max_cells, random_state=rng)
        count = teacher.shape[0]
        if count >= self.n_sub:
            student = teacher[np.sort(rng.choice(count, size=self.n_sub, replace=False))]
        else:
            student = teacher[rng.choice(count, size=self.n_sub, replace=True)]
        return torch.from_numpy(student), torch.from_numpy(teacher)


def collate_sets(items):
    """Stack student sets (equal size) into ``(B, n_sub, d)``; keep teacher sets as a list."""
    students = torch.stack([s for s, _ in items])
    teachers = [t for _, t in items]
    return students, teachers


class EpochSampler(Sampler):
    """Yields ``(epoch, position, sample)`` keys: seeded permutations of the samples.

    An epoch is ``steps_per_epoch * batch_size`` draws taken from back-to-back permutations, so
    a cohort smaller than a batch still fills its batches. Under ``torch.distributed`` each rank
    takes every ``world_size``-th key.
    """

    def __init__(self, n_samples: int, draws_per_epoch: int, random_state: int) -> None:
        self.n_samples = int(n_samples)
        self.draws_per_epoch = int(draws_per_epoch)
        self.random_state = int(random_state)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the keys of ``epoch`` next (Lightning calls this at each epoch start)."""
        self.epoch = int(epoch)

    def _rank(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _keys(self) -> list[tuple[int, int, int]]:
        rounds = math.ceil(self.draws_per_epoch / self.n_samples)
        order = np.concatenate(
            [
                np.random.default_rng([self.random_state, self.epoch, r]).permutation(
                    self.n_samples
                )
                for r in range(rounds)
            ]
        )[: self.draws_per_epoch]
        return [(self.epoch, p, int(j)) for p, j in enumerate(order)]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        rank, world = self._rank()
        return iter(self._keys()[rank::world])

    def __len__(self) -> int:
        rank, world = self._rank()
        return len(range(rank, self.draws_per_epoch, world))
