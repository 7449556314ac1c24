"""One writer per registry: a second process gets a clear "in use by PID …" error instead of a broken store.

The lock is portalocker's (fcntl on POSIX, LockFileEx on Windows), held on `<data dir>/registry.lock` for the
process's lifetime and released by the operating system if the process dies, even on kill -9.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO

import portalocker


class RegistryInUseError(RuntimeError):
    pass


class RegistryLock:
    """An exclusive advisory lock on `<data dir>/registry.lock` (the holder's PID is in a side file)."""

    def __init__(self, data_dir: Path, exclusive: bool = True) -> None:
        self.path = Path(data_dir) / "registry.lock"
        self.holder_path = Path(data_dir) / "registry.lock.pid"
        self._handle: IO[str] | None = None
        self.exclusive = exclusive  # False: server storage, where concurrent writers are safe and allowed

    def acquire(self, wait: float = 0.0) -> None:
        if not self.exclusive:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the process's lifetime
        deadline = time.monotonic() + wait
        while True:
            try:
                portalocker.lock(handle, portalocker.LOCK_EX | portalocker.LOCK_NB)
                break
            except (portalocker.LockException, portalocker.AlreadyLocked):
                if time.monotonic() >= deadline:
                    handle.close()
                    try:
                        holder = self.holder_path.read_text().strip() or "unknown"
                    except OSError:
                        holder = "unknown"
                    raise RegistryInUseError(
                        f"registry {self.path.parent} is in use by PID {holder}; wait for it to finish "
                        f"(or pass --wait SECONDS)"
                    ) from None
                time.sleep(0.2)
        self.holder_path.write_text(str(os.getpid()))
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            portalocker.unlock(self._handle)
            self._handle.close()
            self._handle = None
