"""Render a sweep's index.html in headless Chromium (Debian's chromium package) and save a full-page PNG, to check
that every figure is visible. Prints the screenshot path and how many figures the page embeds.

    .venv/bin/python benchmarks/screenshot_report.py report/index.html --out report/screenshot.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("index")
    ap.add_argument("--out", default=None)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=6000)
    args = ap.parse_args()
    index = Path(args.index).resolve()
    out = Path(args.out or index.with_name("screenshot.png")).resolve()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={args.width},{args.height}",
               f"--screenshot={out}", index.as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    html = index.read_text()
    print(f"{out}  ({out.stat().st_size:,} bytes; the page embeds {html.count('data:image/png;base64,')} figures)")


if __name__ == "__main__":
    main()
