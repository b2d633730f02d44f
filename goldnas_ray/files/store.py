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

Faults of the infrastructure are retried, faults of the input are not. Every call to a store
(a listing, a read, a write, a delete) that fails for a reason that may pass (:func:`transient`:
a timeout, a refused or reset connection, an HTTP 5xx, throttling) is tried again with
exponential backoff (1 s, 2 s, 4 s, ... at most 30 s apart); no new try starts once
``GOLDNAS_STORAGE_RETRY_S`` seconds (default 120) would have passed before it. One line on
stderr says when an object starts being retried, and a StorageError of kind
:data:`INFRASTRUCTURE` naming the object when it gives up. Anything else is not retried here:
a missing object or bucket, denied access, bad credentials, an unknown option or a corrupt
file (pyarrow cannot read its Parquet footer or schema) is a StorageError of kind
:data:`INPUT`; a failure of the store it does not recognise is of kind :data:`INFRASTRUCTURE`
(a sweep tries its search again). That kind is the one answer to "outage or bad input": a
reader of data (``data.datasets``) passes on an infrastructure StorageError as it is and makes
an input one a DataError.

An S3 location is one retry layer: its pyarrow file system makes one attempt per request
(``AwsStandardS3RetryStrategy(max_attempts=1)``), waits ``connect_timeout`` seconds (default
10) for a connection and gives up a request that transfers nothing for ``request_timeout``
seconds (default 30), so that an endpoint that hangs becomes a retried fault too; both are
options of the query string (``s3://bucket/run?request_timeout=60``), beside pyarrow's own
(``region``, ``scheme``, ``endpoint_override``, ``allow_bucket_creation``,
``allow_bucket_deletion``, ``tls_ca_file_path``). A call through a Location therefore ends at
most one try's time (up to ``connect_timeout + request_timeout`` per request it makes, longer
for a transfer that keeps moving) after the budget. A Location sent to another process (a
worker, a trial) is rebuilt there from these options, with the same single attempt. Readers
and writers handed the raw file system (:meth:`Location.arrow`: Ray Train's and Tune's
checkpoints, Ray Data's readers, ``data.stream``'s row groups) keep the timeouts, but pyarrow
pickles an S3 file system without its retry strategy, so in another process each request
there is tried up to 3 times (pyarrow's default) within each of our tries.
"""
from __future__ import annotations

import errno
import io
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

from goldnas_ray.files.atomic import atomic_write

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")

# what a user error is a fault of (``kind``): trying again fails the same way, or may succeed
INPUT, INFRASTRUCTURE = "input", "infrastructure"
RETRY_BUDGET_ENV = "GOLDNAS_STORAGE_RETRY_S"
DEFAULT_RETRY_BUDGET_S = 120.0
# the name of Location.probe's object, <PROBE><8 hex digits>: a process killed between its write
# and its delete leaves it behind (files.search_files.left_by_a_probe)
PROBE = ".goldnas-probe-"
# our options of an S3 URI's query string (pyarrow's URI parser does not take them), seconds
S3_TIMEOUTS = {"connect_timeout": 10.0, "request_timeout": 30.0}


class KindedError(Exception):
    """An error that says what it is a fault of: ``kind``, :data:`INPUT` (the default) or
    :data:`INFRASTRUCTURE`. Pickled with it (Ray ships errors between processes)."""

    def __init__(self, message: str, kind: str = INPUT):
        super().__init__(message)
        self.kind = kind


class StorageError(KindedError, ValueError):
    """An output or input location that cannot be used; nothing was written. ``kind``:
    :data:`INPUT` (the location, bucket or credentials given are wrong) or
    :data:`INFRASTRUCTURE` (the store kept failing for a reason that may pass)."""


class Location:
    """A folder (or a file in one): a local path, or a path in a pyarrow file system."""

    def __init__(self, fs: Any | None, path: str, uri_base: str, query: str, local: Path | None,
                 s3: dict[str, Any] | None = None):
        self._fs, self.path, self._uri_base, self._query, self.local = fs, path, uri_base, query, local
        self._s3 = s3  # the S3 file system's options, to build it again elsewhere (see __reduce__)

    def __reduce__(self):
        # pyarrow pickles an S3 file system without its retry strategy: built again from ours
        if self._s3 is not None:
            return _s3_location, (self._s3, self.path, self._uri_base, self._query)
        return Location, (self._fs, self.path, self._uri_base, self._query, self.local)

    # ---- naming ------------------------------------------------------------------------
    @property
    def is_remote(self) -> bool:
        return self.local is None

    def __truediv__(self, rel: str | Path) -> "Location":
        rel = str(rel).strip("/")
        if self.local is not None:
            return Location(None, "", "", "", self.local / rel)
        return Location(self._fs, f"{self.path}/{rel}", f"{self._uri_base}/{rel}", self._query, None, self._s3)

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

    def size(self) -> int:
        """Bytes of this file."""
        if self.local is not None:
            return self.local.stat().st_size
        return self._guard(lambda: self._info().size)

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
        return self._guard(self._get)

    def _get(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def _put(self, data: bytes) -> None:
        with self.fs.open_output_stream(self.path) as f:  # the upload completes as it closes
            f.write(data)

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
        self._guard(lambda: self._put(data))  # tried again whole: the object is replaced whole
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
        """Remove the file; one that is gone already is not an error (a retried delete whose
        first answer was lost finds nothing)."""
        if self.local is not None:
            self.local.unlink(missing_ok=True)
            return
        try:
            self._guard(lambda: self.fs.delete_file(self.path))
        except StorageError as exc:
            if not isinstance(exc.__cause__, FileNotFoundError):
                raise

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
        """Write and delete a probe object (``PROBE`` + 8 hex digits): the bucket exists,
        credentials work, writing is allowed. Raises StorageError naming what failed."""
        if self.local is not None:
            return
        probe = self / f"{PROBE}{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"probe")
        probe.delete()

    def _guard(self, call: Callable[[], Any]) -> Any:
        return retrying(call, str(self))


def retry_budget() -> float:
    """Seconds a call to a store is retried for (``GOLDNAS_STORAGE_RETRY_S``, default 120)."""
    raw = os.environ.get(RETRY_BUDGET_ENV)
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_RETRY_BUDGET_S
    except ValueError:
        raise StorageError(f"{RETRY_BUDGET_ENV}={raw!r}: expected a number of seconds") from None


# what pyarrow's stores (AWS SDK over curl, GCS, HDFS) say about faults that may pass
_TRANSIENT = re.compile(
    r"timed? ?out|timeout was reached|curlcode: (7|28|52|55|56)\b|could not connect|connection (refused|reset|"
    r"aborted|closed)|broken pipe|http status (5\d\d|429)|slow ?down|throttl|too many requests|"
    r"service ?unavailable|internal ?error|request ?timeout|temporar", re.IGNORECASE)
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EAGAIN}


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` (raised by a store) may pass if the call is tried again: a timeout, a
    refused, reset or broken connection, an HTTP 5xx or 429, throttling. A missing object or
    bucket, denied access, bad credentials, a malformed option or file are not."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)) or getattr(exc, "errno", None) in _TRANSIENT_ERRNOS:
        return True
    if not isinstance(exc, OSError):  # pyarrow's ArrowInvalid (a ValueError): a malformed request
        return False
    text = str(exc)
    return "could not resolve" not in text.lower() and bool(_TRANSIENT.search(text))


_INPUT = re.compile(r"no_such_bucket|bucket does not exist|access_?denied|forbidden|credential|invalidaccesskeyid|"
                    r"signature|invalidbucketname|invalid bucket|http status 4\d\d|"
                    # a corrupt file: pyarrow raises OSError for a Parquet footer or schema it cannot read
                    r"could not open parquet|is this a '?parquet'? file|thrift|magic bytes|corrupt", re.IGNORECASE)


def _of_input(exc: BaseException) -> bool:
    """Whether a failure that is not :func:`transient` is the fault of what was asked (a
    missing object or bucket, denied access, bad credentials, a malformed URI, option or file);
    anything else a store says is taken for its own fault."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return True
    return not isinstance(exc, OSError) or bool(_INPUT.search(str(exc)))


def retrying(call: Callable[[], Any], what: str, sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> Any:
    """``call()``, tried again while it fails :func:`transient` ly, for up to
    :func:`retry_budget` seconds with exponential backoff; any other failure, and the last
    transient one, as a StorageError naming ``what`` (the object or folder)."""
    started, tries, delay = clock(), 0, 1.0
    while True:
        try:
            return call()
        except StorageError:  # a call made through this layer already: retried, classified
            raise
        except (OSError, ValueError) as exc:
            tries += 1
            if not transient(exc):
                raise StorageError(f"{what}: {_explain(exc)}", INPUT if _of_input(exc) else INFRASTRUCTURE) from exc
            budget = retry_budget()
            waited = clock() - started
            if waited + delay > budget:
                raise StorageError(f"{what}: {_explain(exc)} (gave up after {tries} tries in {waited:.0f}s; "
                                   f"{RETRY_BUDGET_ENV} sets how long)", INFRASTRUCTURE) from exc
            if tries == 1:
                print(f"storage: {what}: {_explain(exc)}; retrying for up to {budget:.0f}s", file=sys.stderr,
                      flush=True)
            sleep(delay)
            delay = min(2 * delay, 30.0)


def _explain(exc: Exception) -> str:
    text = str(exc)
    lowered = text.lower()
    if "no_such_bucket" in lowered or "bucket does not exist" in lowered or "not found" in lowered and "bucket" in lowered:
        return f"the bucket does not exist ({text.splitlines()[0]})"
    if "access_denied" in lowered or "accessdenied" in lowered or "forbidden" in lowered:
        return f"access denied ({text.splitlines()[0]})"
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
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    base = f"{scheme}://{parts.netloc}{parts.path}".rstrip("/")
    if scheme == "s3":
        s3 = _s3_options(parts.netloc, options, text)
        return _s3_location(s3, f"{parts.netloc}{parts.path}".rstrip("/"), base, parts.query)
    if any(k in options for k in S3_TIMEOUTS):
        raise StorageError(f"{text}: {', '.join(k for k in S3_TIMEOUTS if k in options)} is an option of s3:// "
                           f"locations only")
    fs, path = retrying(lambda: pafs.FileSystem.from_uri(text), text)
    return Location(fs, path.rstrip("/"), base, parts.query, None)


# the options of an S3 URI's query string pyarrow's URI parser takes, as S3FileSystem arguments
_S3_TEXT, _S3_FLAGS = ("region", "scheme", "endpoint_override", "tls_ca_file_path"), \
    ("allow_bucket_creation", "allow_bucket_deletion")


def _s3_options(bucket: str, given: dict[str, str], text: str) -> dict[str, Any]:
    """The arguments of ``pyarrow.fs.S3FileSystem`` for an ``s3://`` URI's query ``given``:
    pyarrow's options, our timeouts (``S3_TIMEOUTS`` or the URI's) and, as pyarrow's URI parser
    does, the bucket's region asked of AWS when neither a region nor an endpoint is given."""
    if "@" in bucket:
        raise StorageError(f"{text}: credentials are never taken from the URI (see AWS_ACCESS_KEY_ID)")
    args: dict[str, Any] = dict(S3_TIMEOUTS)
    for name, raw in given.items():
        if name in S3_TIMEOUTS:
            try:
                args[name] = float(raw)
            except ValueError:
                raise StorageError(f"{text}: {name}={raw!r} is not a number of seconds") from None
            if args[name] <= 0:
                raise StorageError(f"{text}: {name} must be positive, got {raw}")
        elif name in _S3_TEXT:
            args[name] = raw
        elif name in _S3_FLAGS and raw.lower() in ("true", "false", "1", "0"):
            args[name] = raw.lower() in ("true", "1")
        else:
            raise StorageError(f"{text}: unknown option {name}={raw!r} of an s3:// location (known: "
                               f"{', '.join((*_S3_TEXT, *_S3_FLAGS, *S3_TIMEOUTS))}; flags take true or false)")
    if "region" not in args and "endpoint_override" not in args:
        import pyarrow.fs as pafs
        args["region"] = retrying(lambda: pafs.resolve_s3_region(bucket), text)
    return args


def _s3_location(args: dict[str, Any], path: str, base: str, query: str) -> Location:
    """An S3 Location whose file system makes one attempt per request (the storage layer's
    retries are the only layer)."""
    import pyarrow.fs as pafs
    fs = pafs.S3FileSystem(**args, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    return Location(fs, path, base, query, None, args)


def job_runtime_env() -> dict[str, Any]:
    """The runtime_env of the `ray job submit` job this process is the entrypoint of; empty
    outside one (or when Ray's description of it cannot be read)."""
    import json
    try:
        return json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    except ValueError:
        return {}


def working_copy_note() -> str | None:
    """When this process is a `ray job submit` entrypoint running in a copy of --working-dir,
    the copy's path; else None."""
    return os.getcwd() if job_runtime_env().get("working_dir") else None

