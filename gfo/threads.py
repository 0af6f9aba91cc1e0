"""One torch thread for small CPU work (shared by gfo's COCO driver and the LLM adapter's SVDs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch thread, then restore the thread count.

    Small products and decompositions run many times slower among OpenMP's spinning workers on a
    busy 2-core machine than on one thread (EvoTorch's CMA-ES: docs/benchmarking.md, the BBOB cells;
    the tiny model: docs/lab/first-measurements.md).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
