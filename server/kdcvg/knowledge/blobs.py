"""Content-addressed video storage: one file per (tenant, sha256), written atomically."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TENANT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def is_sha256(value: str) -> bool:
    return bool(_SHA256.match(value))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Videos under `root/<tenant>/<sha[:2]>/<sha>.bin`. A blob is visible only once complete."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = root / ".spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        for stale in self.spool.iterdir():  # left by a crash mid-upload; never acknowledged
            stale.unlink(missing_ok=True)

    def path(self, tenant: str, sha256: str) -> Path:
        if not _TENANT.match(tenant) or not is_sha256(sha256):
            raise ValueError(f"bad blob key {tenant!r}/{sha256!r}")
        return self.root / tenant / sha256[:2] / f"{sha256}.bin"

    def spool_file(self) -> tuple[int, Path]:
        """A temp file for an upload in progress, removed by `discard` or moved by `commit`."""
        fd, name = tempfile.mkstemp(dir=self.spool, suffix=".part")
        return fd, Path(name)

    def commit(self, spooled: Path, tenant: str, sha256: str) -> Path:
        """Moves a fully written, fsynced spool file into place."""
        target = self.path(tenant, sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(spooled, target)
        _fsync_dir(target.parent)
        return target

    def exists(self, tenant: str, sha256: str) -> bool:
        return self.path(tenant, sha256).is_file()

    def read(self, tenant: str, sha256: str) -> bytes:
        return self.path(tenant, sha256).read_bytes()

    def delete(self, tenant: str, sha256: str) -> None:
        self.path(tenant, sha256).unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
