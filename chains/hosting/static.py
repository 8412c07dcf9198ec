"""The typewriter pages. Each folder of playground/ that is served holds only what it serves, so each is a plain
StaticFiles mount: plain/ (the page without a build), shared/ (the modules, stylesheet and vendored libraries the
pages share), the React, Vue and AI SDK builds, and the README's screenshots. package.json, node_modules and the
React and Vue sources sit beside them, under no mount."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

PLAYGROUND = Path(__file__).resolve().parents[2] / "playground"


def mount_playgrounds(app: FastAPI, root: Path = PLAYGROUND) -> None:
    """/playground/ the plain page, /playground/shared/ what the pages share, /playground/react/,
    /playground/vue/ and /playground/ai-sdk/ (the AI SDK's useChat on /api/chat) their Vite builds (`make playground`;
    a notice page until built), /playground/screenshots/, /playground/stats/ the live metrics page."""
    for framework in ("react", "vue", "ai-sdk"):
        built = root / framework / "dist"
        app.mount(f"/playground/{framework}", StaticFiles(directory=built if built.is_dir() else root / "not-built",
                                                          html=True), name=f"playground-{framework}")
    # The live stats page (plots /metrics; no build). Without its slash the /playground mount would answer 404.
    app.add_route("/playground/stats",
                  lambda request: RedirectResponse(str(request.url.replace(path="/playground/stats/"))),
                  include_in_schema=False)
    app.mount("/playground/stats", StaticFiles(directory=root / "stats", html=True), name="playground-stats")
    for folder in ("shared", "screenshots"):  # before /playground, which would take their paths too
        app.mount(f"/playground/{folder}", StaticFiles(directory=root / folder), name=f"playground-{folder}")
    app.mount("/playground", StaticFiles(directory=root / "plain", html=True), name="playground")
