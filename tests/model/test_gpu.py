"""CUDA checks of the model (skipped without a GPU): streaming, mixed precision, paper scale."""

import time

import pytest
import torch

from maestro_sc.model import Maestro, preset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _model(name: str, **overrides) -> Maestro:
    torch.manual_seed(0)
    return Maestro(preset(name, n_markers=30, **overrides)).cuda()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_streamed_equals_batched_on_cuda():
    model = _model("cpu", readout="pma+mass")
    x = torch.randn(3001, 30, device="cuda")
    batched = model.encode_batch(x[None], which="student")[0].detach()
    for chunk in (100, 1024, 5000):
        streamed = model.encode(x, which="student", chunk_size=chunk)
        assert _rel(streamed, batched) < 1e-5, chunk
    scores = model.cell_scores(x, chunk_size=333)
    torch.testing.assert_close(scores, model.cell_scores(x, chunk_size=4000), rtol=1e-4, atol=1e-9)


def test_training_step_bf16_autocast_and_cuda_generator():
    model = _model("gpu")
    gen = torch.Generator(device="cuda").manual_seed(0)
    students = torch.randn(8, model.config.n_sub, 30, device="cuda")
    teachers = [torch.randn(20_000, 30, device="cuda") for _ in range(8)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.training_loss(students, teachers, gen)
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values())
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model.training_loss(students, teachers, gen)
        out["loss"].backward()
    torch.cuda.synchronize()
    print(
        f"\n[gpu preset] step {(time.perf_counter() - start) / 3:.3f} s, ot_iters "
        f"{int(out['ot_iters'])}, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )


def test_million_cells_streamed():
    for dtype in ("float32", "bfloat16"):
        model = _model("gpu", dtype=dtype)
        x = torch.randn(1_000_000, 30, device="cuda")
        z = model.encode(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        z = model.encode(x)
        torch.cuda.synchronize()
        print(f"\n[gpu preset, {dtype}] encode 1e6 cells {time.perf_counter() - start:.3f} s")
        if dtype == "float32":
            reference = z
        else:
            assert _rel(z, reference) < 0.05


def test_paper_preset_step():
    torch.cuda.reset_peak_memory_stats()
    model = _model("paper")
    gen = torch.Generator(device="cuda").manual_seed(0)
    students = torch.randn(1, 10_000, 30, device="cuda")
    teachers = [torch.randn(200_000, 30, device="cuda")]
    timings = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model.training_loss(students, teachers, gen)
        out["loss"].backward()
        model.update_teacher(0.999)
        torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    assert all(torch.isfinite(v) for v in out.values())
    print(
        f"\n[paper preset] step (1 sample, 4 views x 10k cells, teacher 2e5 cells) "
        f"{min(timings):.2f} s, ot_iters {int(out['ot_iters'])}, "
        f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )
