"""chains.hosting.heap: once the app's lifespan starts, what it loaded is frozen out of the collector's sight and
young collections are rarer (full collections paused every stream for 70–260 ms at 1,000 streams)."""

from __future__ import annotations

import gc

from chains.common.settings import load_settings
from chains.hosting.heap import THRESHOLDS


async def test_the_app_settles_the_heap_when_it_starts() -> None:
    import server

    before = gc.get_threshold()
    app = server.create_app(load_settings(_env_file=None, chat_provider="fake"))
    try:
        assert gc.get_threshold() == before  # building the app changes nothing
        async with app.router.lifespan_context(app):
            assert gc.get_threshold() == THRESHOLDS
            assert gc.get_freeze_count() > 10_000  # the modules, classes and the app itself
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
