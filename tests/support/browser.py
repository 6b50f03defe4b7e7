"""Headless Chromium for tests: the DOM a page ends up with, after its scripts ran."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# Every outside host fails to resolve: a page that needs the internet shows it.
LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


def dump_dom(url: str, profile_dir: Path, *extra_args: str, timeout: float = 120) -> str:
    """Load `url` in headless Chromium (installed by scripts/install-system-deps.sh); return the final DOM."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is installed by scripts/install-system-deps.sh"
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-default-apps",
            f"--user-data-dir={profile_dir}",
            *extra_args,
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
