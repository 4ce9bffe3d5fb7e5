"""A training step in parts: independent sub-batches of samples, on a CPU run side by side.

Most of a step (masking, the student encoder, the decoder, the Sinkhorn loss, the projection
head and the teacher) treats each sample on its own, so a batch can be cut into parts that are
computed separately and joined before the few terms that compare samples (distillation centre,
contrastive loss). On a CPU with ``t`` torch threads, :class:`ThreadedParts` runs the parts in
``p`` Python threads with ``t // p`` threads each, forward and backward: a step is thousands of
small operations, and one thread per part wastes less time at OpenMP barriers than two threads
on every operation. The result is that of computing the parts one after the other, to float
round-off; the gradients of the parts are summed in a fixed order, so a step is reproducible.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._utils import torch_threads

#: One worker pool per number of extra threads, kept for the life of the process so that each
#: worker's OpenMP state is set up once.
_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    if workers not in _POOLS:
        _POOLS[workers] = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="maestro-part"
        )
    return _POOLS[workers]


def run_side_by_side(tasks: Sequence[Callable[[], object]], threads_each: int) -> list:
    """Call every task at once, the first in this thread, each with ``threads_each`` threads.

    Returns their results in order. Every task has finished before this returns or raises (the
    first error is raised), and the process's torch thread count is restored.
    """

    def in_worker(task: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            torch.set_num_threads(threads_each)  # this worker's own OpenMP team size
            return task()

        return call

    with torch_threads(threads_each):
        if len(tasks) == 1:
            return [tasks[0]()]
        futures = [_pool(len(tasks) - 1).submit(in_worker(t)) for t in tasks[1:]]
        try:
            first = tasks[0]()
        finally:
            concurrent.futures.wait(futures)
        return [first, *(f.result() for f in futures)]


def split_sizes(n: int, parts: int) -> list[int]:
    """``n`` items in ``parts`` runs as equal as possible, the longer ones first."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


class ThreadedParts(torch.autograd.Function):
    """Parts of a graph built and back-propagated in threads, joined along the first axis.

    ``ThreadedParts.apply(parts, threads_each, n_graph, *params)``: each of ``parts`` is a
    callable returning a list of tensors, of which the first ``n_graph`` depend on ``params``
    (they are differentiated) and the rest are constants. The output is each of those tensors
    concatenated over the parts. The backward pass differentiates each part's graph in its own
    thread and sums the parameter gradients in part order.
    """

    @staticmethod
    def forward(ctx, parts, threads_each: int, n_graph: int, *params: Tensor):
        # autograd records the parts' graphs although this forward runs without it
        results = run_side_by_side([torch.enable_grad()(p) for p in parts], threads_each)
        ctx.graphs = [r[:n_graph] for r in results]
        ctx.sizes = [[g[k].shape[0] for g in ctx.graphs] for k in range(n_graph)]
        ctx.params, ctx.threads_each = params, threads_each
        ctx.set_materialize_grads(False)
        joined = [torch.cat([r[k].detach() for r in results]) for k in range(len(results[0]))]
        ctx.mark_non_differentiable(*joined[n_graph:])
        return tuple(joined)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        graphs, params = ctx.graphs, ctx.params
        ctx.graphs = None  # each part's graph is freed by its own backward pass
        slices = [None if g is None else g.split(s) for g, s in zip(grads, ctx.sizes)]

        def part_grads(i: int) -> Callable[[], Sequence[Tensor | None]]:
            def call() -> Sequence[Tensor | None]:
                pairs = [
                    (out, g[i])
                    for out, g in zip(graphs[i], slices)
                    if g is not None and out.requires_grad
                ]
                if not pairs:
                    return [None] * len(params)
                outs, grad_outs = zip(*pairs)
                return torch.autograd.grad(outs, params, grad_outs, allow_unused=True)

            return call

        per_part = run_side_by_side([part_grads(i) for i in range(len(graphs))], ctx.threads_each)
        total = []
        for gs in zip(*per_part):
            present = [g for g in gs if g is not None]
            total.append(None if not present else sum(present[1:], present[0]))
        return (None, None, None, *total)
