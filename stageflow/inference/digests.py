"""File digests that survive restarts: sha256 once per file version, not per start.

Hashing an SD 1.5 folder (4.3 GB) took ~3.9 s of every torch cold start and
more of an ONNX one (the export is verified too). A `DigestCache` remembers
each file's digest under its stamp: resolved path, size, mtime_ns, ctime_ns,
inode and device. Writing a file changes its mtime and ctime (and `touch -d`
or a copy that restores the mtime still changes the ctime), replacing it
changes its inode, so any change re-hashes the file; an unchanged file is
read from the cache without opening it.

What it trusts: the filesystem's metadata. A bit flip on disk that changes
no stamp is not noticed while the cache holds the file's entry; with no
cache folder configured every call hashes every byte, as before.

The cache is one small JSON file per model folder under the cache folder,
written atomically (temp file + rename); a corrupt or unreadable one is
ignored and rewritten. No torch, no settings: the caller passes the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from stageflow.core.logging import get_logger

log = get_logger(__name__)

# Bump when the entry format or the stamp's fields change.
FORMAT = 1


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class DigestCache:
    """sha256 of files, remembered per (path, stamp) in `folder`; None: never cached."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        # Hashes computed by this object (a test's and a benchmark's count).
        self.hashed = 0

    def digests(self, root: Path, rels: list[str]) -> dict[str, str]:
        """sha256 of each `root/rel`, hashing only those whose stamp changed."""
        root = Path(root).resolve()
        entries = self._read(root)
        out: dict[str, str] = {}
        fresh: dict[str, dict[str, object]] = {}
        for rel in rels:
            path = root.joinpath(*rel.split("/"))
            stamp = _stamp(path)
            known = entries.get(rel)
            if known is not None and known.get("stamp") == stamp:
                out[rel] = str(known["sha256"])
                continue
            out[rel] = file_sha256(path)
            self.hashed += 1
            # Stamp taken before hashing: a write during the hash changes it, so
            # the next call hashes again rather than trusting a torn read.
            fresh[rel] = {"stamp": stamp, "sha256": out[rel]}
        if fresh and self.folder is not None:
            self._write(root, {**entries, **fresh})
        return out

    def sha256(self, path: Path) -> str:
        path = Path(path)
        return self.digests(path.parent, [path.name])[path.name]

    def _file(self, root: Path) -> Path:
        assert self.folder is not None
        return self.folder / f"{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.json"

    def _read(self, root: Path) -> dict[str, dict[str, object]]:
        if self.folder is None:
            return {}
        try:
            data = json.loads(self._file(root).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(data, dict)
            or data.get("format") != FORMAT
            or data.get("root") != str(root)
        ):
            return {}
        files = data.get("files")
        return files if isinstance(files, dict) else {}

    def _write(self, root: Path, files: dict[str, dict[str, object]]) -> None:
        target = self._file(root)
        body = json.dumps({"format": FORMAT, "root": str(root), "files": files}, sort_keys=True)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, scratch = tempfile.mkstemp(dir=target.parent, prefix=".digests-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body)
            os.replace(scratch, target)
        except OSError as err:
            # A read-only cache folder costs the next start a re-hash, nothing more.
            log.warning("digest_cache.write_failed", folder=str(self.folder), error=str(err))


NO_CACHE = DigestCache(None)
