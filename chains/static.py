"""The typewriter pages: playground/ holds the plain page beside the React and Vue sources (and, once built,
node_modules); only the pages themselves are served."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope


class PlainPage(StaticFiles):
    """The plain page's own files (top-level .html, .js, .css), its vendored libraries (vendor/) and the README
    screenshots; nothing else."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        top_level_asset = "/" not in path and path.endswith((".html", ".js", ".css"))
        if path not in ("", ".") and not top_level_asset and not path.startswith(("screenshots/", "vendor/")):
            raise HTTPException(404)
        return await super().get_response(path, scope)


def mount_playgrounds(app: FastAPI, root: Path) -> None:
    """/playground/react/ and /playground/vue/ serve their Vite builds (`make playground`; a notice page until
    built), /playground/ the plain page."""
    for framework in ("react", "vue"):
        built = root / framework / "dist"
        app.mount(f"/playground/{framework}", StaticFiles(directory=built if built.is_dir() else root / "not-built",
                                                          html=True), name=f"playground-{framework}")
    app.mount("/playground", PlainPage(directory=root, html=True), name="playground")
