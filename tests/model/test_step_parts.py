"""A training step computed in sub-batches, side by side in threads on a CPU."""

import copy
import threading

import pytest
import torch

from maestro_sc.model import Maestro, MaestroConfig, _parts

from .conftest import tiny_config


def _config(**overrides) -> MaestroConfig:
    base = dict(n_prototypes=4, readout="pma+proto", w_con=1.0, step_parts=2)
    return tiny_config(**{**base, **overrides})


def _batch(n_samples: int = 5):
    gen = torch.Generator().manual_seed(1)
    students = torch.randn(n_samples, 48, 5, generator=gen)
    teachers = [torch.randn(60 + 7 * i, 5, generator=gen) + 0.3 * i for i in range(n_samples)]
    return students, teachers


def _step(model: Maestro, threads: int, n_samples: int = 5):
    """Losses, gradients and centre of one step from a copy of ``model`` on ``threads``."""
    torch.set_num_threads(threads)
    net = copy.deepcopy(model)
    students, teachers = _batch(n_samples)
    out = net.training_loss(students, teachers, generator=torch.Generator().manual_seed(7))
    out["loss"].backward()
    grads = {name: p.grad for name, p in net.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads, net.center.clone()


def test_threaded_parts_give_the_step_of_parts_in_turn(monkeypatch):
    model = Maestro(_config())
    threads_seen = set()
    inner = _parts.run_side_by_side

    def spy(tasks, threads_each):
        def record(task):
            def call():
                threads_seen.add(threading.get_ident())
                return task()

            return call

        return inner([record(t) for t in tasks], threads_each)

    monkeypatch.setattr(_parts, "run_side_by_side", spy)
    in_turn, grads_in_turn, centre_in_turn = _step(model, threads=1)
    assert not threads_seen  # one torch thread: the parts run one after the other
    side_by_side, grads, centre = _step(model, threads=2)
    assert len(threads_seen) == 2  # forward and backward of the 2 parts ran in 2 threads
    assert torch.get_num_threads() == 2  # the caller's thread count is back
    assert side_by_side.keys() == in_turn.keys()
    for key in in_turn:
        torch.testing.assert_close(side_by_side[key], in_turn[key], rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_in_turn.keys()
    assert len(grads) == sum(p.requires_grad for p in model.parameters())
    for name in grads:
        torch.testing.assert_close(grads[name], grads_in_turn[name], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(centre, centre_in_turn)


def test_threaded_step_is_reproducible():
    model = Maestro(_config())
    first, grads_first, _ = _step(model, threads=2)
    second, grads_second, _ = _step(model, threads=2)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    for name in grads_first:
        assert torch.equal(grads_first[name], grads_second[name]), name


def test_parts_keep_each_sample_in_its_place():
    """With nothing masked, z and the teacher depend on the sample alone, whatever the parts."""
    torch.set_num_threads(1)
    model = Maestro(_config(mask_rates=(0.0,), step_parts=1))
    students, teachers = _batch(7)
    gen = torch.Generator().manual_seed(0)
    whole = model._step_parts(students, teachers, gen)
    model.config.step_parts = 3  # sub-batches of 3, 2 and 2 samples
    for threads in (1, 3):
        torch.set_num_threads(threads)
        parts = model._step_parts(students, teachers, torch.Generator().manual_seed(0))
        # z, the composition, the teacher logits and embeddings, row for row
        for index in (2, 3, 4, 5):
            torch.testing.assert_close(parts[index], whole[index], rtol=1e-4, atol=1e-5)
        assert parts[0].shape == whole[0].shape and parts[1].shape == whole[1].shape
        assert parts[6].shape == (3,)  # Sinkhorn iterations of each part


def test_automatic_parts_follow_the_threads():
    model = Maestro(_config(step_parts=None))
    cpu = torch.device("cpu")
    torch.set_num_threads(2)
    assert model._n_step_parts(8, cpu) == 2
    assert model._n_step_parts(1, cpu) == 1
    torch.set_num_threads(1)
    assert model._n_step_parts(8, cpu) == 1
    model.config.step_parts = 4
    assert model._n_step_parts(3, cpu) == 3


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "2"])
def test_step_parts_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="step_parts"):
        tiny_config(step_parts=bad)


def test_side_by_side_tasks_raise_and_restore_the_threads():
    torch.set_num_threads(2)

    def fails():
        raise RuntimeError("part failed")

    with pytest.raises(RuntimeError, match="part failed"):
        _parts.run_side_by_side([lambda: torch.get_num_threads(), fails], threads_each=1)
    assert torch.get_num_threads() == 2
    assert _parts.run_side_by_side([torch.get_num_threads] * 2, threads_each=1) == [1, 1]
    assert _parts.run_side_by_side([torch.get_num_threads], threads_each=1) == [1]
    assert torch.get_num_threads() == 2


def test_split_sizes():
    assert _parts.split_sizes(8, 2) == [4, 4]
    assert _parts.split_sizes(7, 3) == [3, 2, 2]
    assert sum(_parts.split_sizes(5, 5)) == 5
