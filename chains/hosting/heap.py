"""The garbage collector set for a server of many concurrent streams.

CPython's cyclic collector pauses the event loop, and every stream waits through the pause. With the app loaded
(LangChain, pydantic, FastAPI: a few hundred thousand objects) and 1,000 streams open, a full collection took
70–260 ms on the bench machine, several per B3 run, and one such pause delays every token due meanwhile: the p99
inter-token gap is made of them. So, once the app is loaded, the objects it will keep for its life are moved out
of the collector's sight (`gc.freeze`), and the young generation is collected every 5,000 allocations rather
than 700, which keeps full collections out of a run of streams (bench/README.md has the measurements). Cycles are
still collected: young ones as before, old ones less often.
"""

from __future__ import annotations

import gc

# (allocations before a young collection, young collections per middle one, middle ones per full one)
THRESHOLDS = (5_000, 20, 100)


def settle_heap() -> None:
    """Called once the app is loaded, before it serves (each worker: its lifespan's start)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
