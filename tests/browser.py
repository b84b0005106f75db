"""Headless Chromium for the browser tests: Debian's package, installed when missing.

CI runs as root on a fresh Debian machine, so the first browser test installs `chromium` with
apt; playwright then drives that binary over its own protocol (no chromedriver; its own browser
downloads cannot be fetched here).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess

PACKAGES = ("chromium",)
# A fresh machine may still be running its first unattended upgrade: wait for dpkg's lock.
DPKG_LOCK_WAIT_S = 600
LOCK = "/tmp/busgen-chromium-install.lock"


def chromium_path() -> str:
    """Path of the system chromium, installing Debian's package first when it is missing."""
    # Parallel test workers each reach here; the lock keeps two apt runs off the dpkg lock.
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = shutil.which("chromium")
        if path is None:
            _apt_install()
            path = shutil.which("chromium")
    if path is None:
        raise RuntimeError(f"apt-get installed {PACKAGES} but no `chromium` is on PATH")
    return path


def _apt_install() -> None:
    if os.geteuid() != 0:
        raise RuntimeError(
            "the browser tests need Debian's chromium: run `apt-get install -y chromium` as "
            "root (the tests install it themselves when run as root)"
        )
    if shutil.which("apt-get") is None:
        raise RuntimeError("the browser tests need a `chromium` on PATH (no apt-get to install it)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", f"DPkg::Lock::Timeout={DPKG_LOCK_WAIT_S}"]
    for args in ([*wait, "update", "-qq"], [*wait, "install", "-y", "-qq", *PACKAGES]):
        result = subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"apt-get {' '.join(args)} failed:\n{result.stderr[-2000:]}")


if __name__ == "__main__":
    print(chromium_path())
