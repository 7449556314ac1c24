"""One writer per registry: a second process gets a clear "in use by PID …" error instead of a broken store."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


class RegistryInUseError(RuntimeError):
    pass


class RegistryLock:
    """An exclusive advisory lock on `<data dir>/registry.lock`, released when the process ends (even on kill)."""

    def __init__(self, data_dir: Path, exclusive: bool = True) -> None:
        self.path = Path(data_dir) / "registry.lock"
        self._fd: int | None = None
        self.exclusive = exclusive  # False: server storage, where concurrent writers are safe and allowed

    def acquire(self, wait: float = 0.0) -> None:
        if not self.exclusive:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise RegistryInUseError(
                        f"registry {self.path.parent} is in use by PID {holder}; wait for it to finish "
                        f"(or pass --wait SECONDS)"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
