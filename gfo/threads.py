"""One torch thread for small CPU work (shared by gfo's COCO driver and the LLM adapter's SVDs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch thread, then restore the thread count.

    Small products and decompositions lose to OpenMP's spinning workers on a busy 2-core machine:
    a 576x576 SVD took 14-30 s on two threads against 0.06 s on one, and EvoTorch's CMA-ES at
    d = 10 took 8 ms per generation against 0.3 ms (measured here).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
