#!/usr/bin/env python
"""Make docs/images/try-it.png: `cvgen serve`'s page with its "try it" panel after one run.

    python scripts/screenshot_try_panel.py PACK [--model M.gguf] [--set language=0.8]
        [--prompt TEXT] [--max-tokens 60] [--out docs/images/try-it.png]

It serves PACK on 127.0.0.1 (a free port) with cvgen's own server app (`cvgen.serve.api`) on the
real model, one thread, no key; opens the page in headless Chromium (Debian's, $CVGEN_CHROMIUM,
default /usr/bin/chromium; never a downloaded one); sets the axes by their scale fields, runs
the panel, waits until both columns have finished, and saves a 1200x800 screenshot with the
panel in view. Greedy decoding, so the same pack, model and prompt give the same picture.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cvgen.pack.page import render_page
from cvgen.pack.steering import PackSteering
from cvgen.serve.api import create_app
from cvgen.serve.service import ServeSettings, Service

DEFAULT_PROMPT = "Describe the harbour of a small fishing town at dawn."
WAIT_SECONDS = 300.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until(page: Any, expression: str, seconds: float) -> None:
    """Poll from here: the page's policy forbids the eval() Playwright's own waiting uses."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {seconds:.0f} s waiting for: {expression}")
        time.sleep(0.1)


def _shoot(url: str, assignments: list[tuple[str, str]], args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CVGEN_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        context = browser.new_context(viewport={"width": 1200, "height": 800})
        page = context.new_page()
        page.goto(url)
        names = page.eval_on_selector_all(
            ".axis .axis-name", "nodes => nodes.map(n => n.textContent)"
        )
        for axis, scale in assignments:
            page.fill(f"#axis-{names.index(axis)}-scale", scale)
        page.fill("#try-prompt", args.prompt)
        page.fill("#try-max-tokens", str(args.max_tokens))
        page.click("#try-run")
        done = " && ".join(
            f"(document.getElementById('try-{side}-status').textContent.startsWith('finished')"
            f" || !document.getElementById('try-{side}-error').hidden)"
            for side in ("steered", "unsteered")
        )
        _wait_until(page, done, WAIT_SECONDS)
        errors = page.eval_on_selector_all(
            ".try-column .error:not([hidden])", "ns => ns.map(n => n.textContent)"
        )
        if errors:
            raise SystemExit(f"the run failed: {errors}")
        page.evaluate("document.getElementById('try').scrollIntoView({block: 'end'})")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pack", type=Path)
    parser.add_argument("--model", type=Path, default=None, help="default: the pack's source")
    parser.add_argument("--set", dest="assignments", action="append", default=None)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("docs/images/try-it.png"))
    args = parser.parse_args()

    import uvicorn

    steering = PackSteering(args.pack)
    model = args.model or Path(str(steering.data["model"]["source"]))
    settings = ServeSettings(ctx_size=1024, max_tokens=256, threads=1)
    service = Service(steering, model, settings)
    serve = {"model": service.model_id, "auth": False, "max_tokens": settings.max_tokens}
    pack = str(args.pack.expanduser().resolve())

    def page() -> str:
        return render_page(
            steering.manifest, model_path=str(model), vector_dir=pack, pack_label=pack, serve=serve
        )

    port = _free_port()
    app = create_app(service, api_key=None, page=page)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        texts = args.assignments or [f"{next(iter(steering.axes))}=0.8"]
        assignments = [(text.partition("=")[0], text.partition("=")[2]) for text in texts]
        _shoot(f"http://127.0.0.1:{port}/", assignments, args)
    finally:
        server.should_exit = True
        thread.join(30)
        service.close()
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size // 1024} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
