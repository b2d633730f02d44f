"""Where a run's files live: a local folder or object storage, behind one small interface.

``location("runs/x")``, ``location("/abs/x")``, ``location("file:///abs/x")`` are local
folders; ``location("s3://bucket/prefix")`` (also ``gs://``, ``hdfs://``, ``abfs://``) is any
store pyarrow resolves, with its options in the query string, e.g.
``s3://bucket/run?endpoint_override=127.0.0.1:9000&scheme=http`` for an S3-compatible server.
Credentials come from where pyarrow looks for them (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``~/.aws/credentials``, instance roles, ...): never from the URI.

A reader never sees half a file: a local file is written beside its place and renamed over
it; an object is uploaded whole in one request (S3 and GCS make an object visible only when
its upload completes, and a replaced object is swapped whole).
"""
from __future__ import annotations

import io
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from goldnas_ray.files.atomic import atomic_write

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


class StorageError(ValueError):
    """An output or input location that cannot be used; nothing was written."""


class Location:
    """A folder (or a file in one): a local path, or a path in a pyarrow file system."""

    def __init__(self, fs: Any | None, path: str, uri_base: str, query: str, local: Path | None):
        self._fs, self.path, self._uri_base, self._query, self.local = fs, path, uri_base, query, local

    # ---- naming ------------------------------------------------------------------------
    @property
    def is_remote(self) -> bool:
        return self.local is None

    def __truediv__(self, rel: str | Path) -> "Location":
        rel = str(rel).strip("/")
        if self.local is not None:
            return Location(None, "", "", "", self.local / rel)
        return Location(self._fs, f"{self.path}/{rel}", f"{self._uri_base}/{rel}", self._query, None)

    @property
    def name(self) -> str:
        return self.local.name if self.local is not None else self.path.rsplit("/", 1)[-1]

    @property
    def uri(self) -> str:
        """What a user passes to find this again (query options included)."""
        if self.local is not None:
            return str(self.local)
        return self._uri_base + (f"?{self._query}" if self._query else "")

    def __str__(self) -> str:  # for messages: the options of the query string are noise there
        return str(self.local) if self.local is not None else self._uri_base

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and self.uri == other.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    @property
    def fs(self) -> Any:
        if self._fs is None:
            import pyarrow.fs as pafs
            self._fs = pafs.LocalFileSystem()
        return self._fs

    # ---- queries -----------------------------------------------------------------------
    def _info(self):
        return self.fs.get_file_info(self.path if self.local is None else str(self.local))

    def is_file(self) -> bool:
        if self.local is not None:
            return self.local.is_file()
        import pyarrow.fs as pafs
        return self._guard(lambda: self._info().type == pafs.FileType.File)

    def is_dir(self) -> bool:
        if self.local is not None:
            return self.local.is_dir()
        return bool(self.names())

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def names(self) -> list[str]:
        """Names directly inside this folder ([] when it does not exist)."""
        if self.local is not None:
            return sorted(p.name for p in self.local.iterdir()) if self.local.is_dir() else []
        import pyarrow.fs as pafs
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self._guard(lambda: self.fs.get_file_info(selector)))

    def subfolders(self) -> list[str]:
        """Names of the folders directly inside this one ([] when it does not exist). An object
        store has no folders: a prefix that objects lie under counts as one."""
        if self.local is not None:
            return sorted(p.name for p in self.local.iterdir() if p.is_dir()) if self.local.is_dir() else []
        import pyarrow.fs as pafs
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self._guard(lambda: self.fs.get_file_info(selector))
                      if i.type == pafs.FileType.Directory)

    def files(self) -> list[str]:
        """Paths of every file below this folder, relative to it."""
        if self.local is not None:
            if not self.local.is_dir():
                return []
            return sorted(str(p.relative_to(self.local)) for p in self.local.rglob("*") if p.is_file())
        import pyarrow.fs as pafs
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=True)
        infos = self._guard(lambda: self.fs.get_file_info(selector))
        return sorted(i.path[len(self.path) + 1:] for i in infos if i.type == pafs.FileType.File)

    # ---- reading and writing -----------------------------------------------------------
    def read_bytes(self) -> bytes:
        if self.local is not None:
            return self.local.read_bytes()
        if not self.is_file():
            raise FileNotFoundError(f"{self} does not exist")
        with self._guard(lambda: self.fs.open_input_stream(self.path)) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write(self, produce: Callable[[Path], object]) -> "Location":
        """``produce(tmp)`` writes the content to a local file ``tmp`` (which keeps this
        file's suffix); it then replaces this file whole."""
        if self.local is not None:
            atomic_write(self.local, produce)
            return self
        suffix = Path(self.path).suffix
        with tempfile.TemporaryDirectory(prefix="goldnas-") as d:
            tmp = Path(d) / f"part{suffix}"
            produce(tmp)
            self.write_bytes(tmp.read_bytes())
        return self

    def write_bytes(self, data: bytes) -> "Location":
        if self.local is not None:
            atomic_write(self.local, lambda tmp: tmp.write_bytes(data))
            return self
        with self._guard(lambda: self.fs.open_output_stream(self.path)) as f:
            f.write(data)
        return self

    def write_text(self, text: str) -> "Location":
        return self.write_bytes(text.encode())

    def append_line(self, line: str) -> None:
        """Add one line to a small log file (objects cannot grow: rewritten whole)."""
        if self.local is not None:
            self.local.parent.mkdir(parents=True, exist_ok=True)
            with open(self.local, "a") as f:
                f.write(line.rstrip("\n") + "\n")
            return
        old = self.read_text() if self.is_file() else ""
        self.write_text(old + line.rstrip("\n") + "\n")

    def delete(self) -> None:
        if self.local is not None:
            self.local.unlink(missing_ok=True)
        else:
            self._guard(lambda: self.fs.delete_file(self.path))

    def resolved(self) -> "Location":
        """The same place with a local path made absolute (a job's workers do not share the
        driver's working directory); a storage URI as it is."""
        return self if self.local is None else Location(None, "", "", "", self.local.resolve())

    def mkdir(self) -> None:
        """Create the folder (object stores have no folders: nothing to do)."""
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)

    # ---- whole folders -----------------------------------------------------------------
    def upload(self, folder: Path) -> None:
        """Copy every file below the local ``folder`` here, each replaced whole."""
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                (self / str(p.relative_to(folder))).write_bytes(p.read_bytes())

    def download(self, folder: Path) -> Path:
        """Copy every file below this folder into the local ``folder``; returns it."""
        for rel in self.files():
            target = Path(folder) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((self / rel).read_bytes())
        return Path(folder)

    def open_buffer(self) -> io.BytesIO:
        """The file's content as a seekable in-memory file (for torch.load, pandas)."""
        return io.BytesIO(self.read_bytes())

    # ---- other readers and writers -------------------------------------------------------
    def arrow(self) -> tuple[str, Any]:
        """(path, filesystem) for readers that take a pyarrow file system (pyarrow.parquet, Ray
        Data's read_*, Ray Train / Tune's storage_path and storage_filesystem); None for a local
        path, which they open themselves."""
        if self.local is not None:
            return str(self.local), None
        return self.path, self.fs

    # ---- checks ------------------------------------------------------------------------
    def probe(self) -> None:
        """Write and delete a probe object: the bucket exists, credentials work, writing is
        allowed. Raises StorageError naming what failed."""
        if self.local is not None:
            return
        probe = self / f".goldnas-probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"probe")
        probe.delete()

    def _guard(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (OSError, ValueError) as exc:
            raise StorageError(f"{self}: {_explain(exc)}") from exc


def _explain(exc: Exception) -> str:
    text = str(exc)
    lowered = text.lower()
    if "no_such_bucket" in lowered or "bucket does not exist" in lowered or "not found" in lowered and "bucket" in lowered:
        return f"the bucket does not exist ({text.splitlines()[0]})"
    if "access_denied" in lowered or "accessdenied" in lowered or "forbidden" in lowered:
        return f"writing is not allowed there ({text.splitlines()[0]})"
    if "credential" in lowered or "invalidaccesskeyid" in lowered or "signature" in lowered:
        return f"no usable credentials ({text.splitlines()[0]})"
    return text.splitlines()[0] if text else type(exc).__name__


def location(where: "str | Path | Location") -> Location:
    """A Location from a path, a ``file://`` URI or an object-store URI (checked: unknown
    schemes and malformed URIs raise StorageError)."""
    if isinstance(where, Location):
        return where
    text = str(where)
    if "://" not in text:
        return Location(None, "", "", "", Path(text).expanduser())
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return Location(None, "", "", "", Path(parts.path))
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(f"{text}: unknown storage scheme {scheme!r}; use a local path, file://, "
                           f"or one of {', '.join(s + '://' for s in REMOTE_SCHEMES)}")
    if not parts.netloc:
        raise StorageError(f"{text}: no bucket named (expected {scheme}://BUCKET/PREFIX)")
    import pyarrow.fs as pafs
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (OSError, ValueError) as exc:
        raise StorageError(f"{text}: {_explain(exc)}") from exc
    base = f"{scheme}://{parts.netloc}{parts.path}".rstrip("/")
    return Location(fs, path.rstrip("/"), base, parts.query, None)


def is_uri(where: "str | Path") -> bool:
    return "://" in str(where) and not str(where).startswith("file://")


def working_copy_note() -> str | None:
    """When this process is a `ray job submit` entrypoint running in a copy of --working-dir,
    the copy's path; else None."""
    import json
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except ValueError:
        return None
    return os.getcwd() if runtime_env.get("working_dir") else None

