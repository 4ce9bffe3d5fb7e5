import pytest
import torch

from maestro_sc.model import MaestroConfig


def tiny_config(**overrides) -> MaestroConfig:
    """A model small enough for sub-second tests."""
    base = dict(
        n_markers=5,
        latent_dim=16,
        ff_dim=32,
        n_heads=2,
        n_inducing=6,
        n_sub=48,
        mask_rates=(0.25, 0.5),
        head_dim=32,
        head_hidden=32,
        head_bottleneck=8,
        chunk_size=64,
        batch_size=4,
    )
    return MaestroConfig(**{**base, **overrides})


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # These tensors are tiny: on a shared CI machine, syncing two threads per op costs far more
    # than it saves (a 10x slowdown of the Sinkhorn loop was seen).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
