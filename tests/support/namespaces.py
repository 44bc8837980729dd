"""Whether this machine can start a process in a new pid namespace (`unshare -p`), as a container
restart does: the store tests use it to show what another host sees."""

from __future__ import annotations

import contextlib
import os


def unshare_works() -> bool:
    if os.geteuid() != 0:
        return False
    with contextlib.suppress(OSError):
        return os.spawnlp(os.P_WAIT, "unshare", "unshare", "-p", "-f", "--mount-proc", "true") == 0
    return False
