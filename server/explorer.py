"""The feature-map explorer: a page at `/` of the HTTP port that shows what each layer of a model sees.

The page is static files (`server/explorer/`: HTML, CSS, plain ES modules, no build step) that
talk to the server only through the KServe v2 HTTP API beside them, so the browser's network tab
shows every request it makes. This module only serves those files and the shipped sample images;
it holds no inference code. By default the routes need no bearer token (`--auth-open` names
`explorer`): they serve nothing but the page and the samples, and the page sends the token, when
the server wants one, with its API calls.
"""
from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

PAGE_DIR = Path(__file__).resolve().parent / "explorer"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"   # absent when installed without the repository
EXAMPLE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def example_files() -> dict[str, Path]:
    """The sample images by file name: only images, so the route cannot hand out the script beside them."""
    if not EXAMPLES_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(EXAMPLES_DIR.iterdir()) if p.suffix.lower() in EXAMPLE_SUFFIXES and p.is_file()}


async def page(request: Request) -> Response:
    return FileResponse(PAGE_DIR / "index.html")


async def example_index(request: Request) -> Response:
    return JSONResponse({"examples": list(example_files())})


async def example(request: Request) -> Response:
    path = example_files().get(request.path_params["name"])
    if path is None:
        return JSONResponse({"error": "no such example image"}, status_code=404)
    return FileResponse(path, media_type=EXAMPLE_SUFFIXES[path.suffix.lower()])


def explorer_routes() -> list:
    """`/` (the page), `/explorer/...` (its modules and style), `/examples/` (the sample images, listed) and
    `/examples/{name}` (one of them)."""
    return [Route("/", page), Mount("/explorer", StaticFiles(directory=PAGE_DIR), name="explorer"),
            Route("/examples/", example_index), Route("/examples/{name}", example)]
