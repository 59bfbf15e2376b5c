"""A real headless browser for the HTML reports: Chromium's command line, where one is installed (tests skip with
the reason otherwise). `open_page` loads a copy of the page with a small script added that records every error event
(a script error, an image that fails to decode or load) and, once loaded, each image's decoded and rendered size;
Chromium prints the DOM after the page settles, and the record is read back from it. Console output goes to stderr
(`--enable-logging=stderr`), where console errors show as CONSOLE lines.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--no-first-run", "--allow-file-access-from-files"]
_CHECK = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(e.message || ("failed: " + (e.target && e.target.tagName))),
                        true);
window.addEventListener("load", () => {
  const images = Array.from(document.images).map(i => [i.naturalWidth, i.naturalHeight, i.clientWidth,
                                                       i.clientHeight, i.complete]);
  document.documentElement.setAttribute("data-check", JSON.stringify({errors: window.__errors, images: images}));
});
</script>"""


def browser() -> str:
    """The Chromium binary, or a skip saying none is installed."""
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip(f"no headless browser installed (looked for {', '.join(BROWSERS)})")


def open_page(page: Path, screenshot: Path, height: int = 4000) -> dict:
    """Load `page` in headless Chromium: {"errors": [...], "images": [[natural w, h, rendered w, h, complete]],
    "console": [console lines]}; a screenshot of the page as it is goes to `screenshot`."""
    binary = browser()
    probe = page.with_name(f".check-{page.name}")
    probe.write_text(page.read_text().replace("</head>", _CHECK + "\n</head>", 1))
    try:
        done = subprocess.run([binary, *FLAGS, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                               "--dump-dom", probe.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'data-check="([^"]*)"', done.stdout)
    assert found, f"the page never finished loading:\n{done.stderr[-2000:]}"
    record = json.loads(html.unescape(found.group(1)))
    record["console"] = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    shot = subprocess.run([binary, *FLAGS, f"--screenshot={screenshot.resolve()}", f"--window-size=1280,{height}",
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), shot.stderr[-2000:]
    return record
