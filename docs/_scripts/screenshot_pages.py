"""Screenshots of rendered pages of the docs site (after ``make docs``), in headless Chromium driven by
Playwright (the system Chromium: ``apt-get install chromium``, ``pip install playwright``).

    python docs/_scripts/screenshot_pages.py guides/gpu-cluster reference/config --out /tmp/docs-shots
"""

from __future__ import annotations

import argparse
import functools
import http.server
import threading
from pathlib import Path

SITE = Path(__file__).resolve().parents[2] / "site"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="+", help="page paths of the site, e.g. guides/gpu-cluster")
    parser.add_argument("--out", default="site-shots")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--height", type=int, default=2200)
    args = parser.parse_args()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": args.height})
        for name in args.pages:
            page.goto(f"http://127.0.0.1:{server.server_port}/{name.strip('/')}/")
            page.wait_for_load_state("networkidle")
            target = out / f"{name.strip('/').replace('/', '-')}.png"
            page.screenshot(path=str(target))
            print(target)
        browser.close()
    server.shutdown()


if __name__ == "__main__":
    main()
