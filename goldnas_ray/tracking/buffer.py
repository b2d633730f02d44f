"""MLflow writes that never stop a run: :class:`BufferedClient`, an ``MlflowClient`` whose writes
outlive an outage of a tracking server.

A tracking server that stops answering after a good start (a restart, a redeploy) is not the
run's failure. Every write (params, metrics with their steps and timestamps, tags, statuses,
artifacts, tables) first goes to the server with a short budget: in a pipeline's processes
(``cli.process.configure_process`` and the Ray job's runtime_env set :data:`BUDGET` where the
user set none), MLflow's ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``
/ ``MLFLOW_HTTP_REQUEST_TIMEOUT`` are 2 / 1 / 10, so one write blocks an epoch for at most
about 35 s (a refused connection: about 3 s); this module sets no environment. When it
fails on the connection, a timeout or a 502/503/504 (a 500 only when ``/health`` fails too:
:func:`is_outage`), the console says so once ("MLflow at URI unreachable since epoch N:
buffering; the run goes on") and from then on every write is appended, in order, as one JSON
line to ``<out>/.mlflow-buffer/calls.jsonl`` through the storage layer (a bucket too), files
copied beside it; nothing is sent but a 2-s ``/health`` probe, at most every
:data:`PROBE_EVERY` seconds. Reads (``ask``) answer None meanwhile. When the server answers,
the lines are replayed in order ("replayed K items"), each once: ``sent`` counts the lines
already replayed, so a replay that stops half way (or a resume, or another node, or ``python
-m goldnas_ray.tracking.replay OUT``) goes on after them, and a metric whose (run, key, step)
the server already holds is not sent again (a resumed run logs while buffering the epochs it
cannot know were logged). A line that still fails while the server answers ``/health`` (tried
twice; a 4xx once) is said once and set aside, with its error, in
``<out>/.mlflow-buffer.failed.jsonl``; the replay goes on. A write the server refuses while
the run is not buffering (a 4xx, or a 500 with ``/health`` answering) raises as before: that
is a bug, not an outage. Only http(s) tracking servers are buffered; a sqlite or file store is
written directly.
"""
from __future__ import annotations

import inspect
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from goldnas_ray.files.store import Location, location
from goldnas_ray.tracking.common import SERVER, healthy, store_kind

BUFFER = ".mlflow-buffer"
FAILED = ".mlflow-buffer.failed.jsonl"  # beside the buffer: the lines a healthy server refused
KIND = "__buffered__"  # marks a value encoded by Buffer (an MLflow entity, a table, a file)
PROBE_EVERY = 30.0  # seconds between /health probes while buffering
# MLflow's HTTP retries for a pipeline's processes (set by cli.process, the user's values kept)
BUDGET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
          "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# the MlflowClient methods that write; any other attribute (reads) goes to the client as it is
WRITES = {"log_batch", "log_metric", "log_param", "set_tag", "update_run", "set_terminated", "log_artifact",
          "log_artifacts", "log_table", "log_text", "delete_tag"}


class Unreachable(Exception):
    """A replay stopped: the server is away (the lines sent before are counted)."""


GONE = {502, 503, 504}  # a proxy's or a restarting server's answers


def is_outage(exc: BaseException, uri: str | None = None) -> bool:
    """A failure that may pass: no connection, a timeout, a 502/503/504 (also when MLflow's
    retries ran out on them), or a 500 while the server ``uri`` does not answer ``/health``.
    MLflow raises its connection failures as an MlflowException (HTTP 500) whose context is
    the requests error: the chain is read. Any other 500 or a 4xx is the request's failure."""
    from mlflow.exceptions import MlflowException

    link: BaseException | None = exc
    while link is not None:
        gave_up = re.search(r"too many (\d{3}) error responses", str(link))
        if gave_up:
            return int(gave_up.group(1)) in GONE or (int(gave_up.group(1)) == 500 and _away(uri))
        if isinstance(link, MlflowException) and link.get_http_status_code() in GONE:
            return True
        if isinstance(link, (OSError, TimeoutError)) or type(link).__module__.startswith(("requests", "urllib3")):
            return True
        link = link.__cause__ or link.__context__
    return isinstance(exc, MlflowException) and exc.get_http_status_code() == 500 and _away(uri)


def _away(uri: str | None) -> bool:
    return uri is not None and store_kind(uri) == SERVER and not healthy(uri)


class Buffer:
    """The writes waiting in ``<out>/.mlflow-buffer``: ``calls.jsonl`` (one call a line),
    ``sent`` (how many lines were replayed), ``uri`` (the server), ``files/`` (artifacts)."""

    def __init__(self, out: "Path | Location"):
        self.out = location(out)
        self.dir = self.out / BUFFER

    def pending(self) -> int:
        calls = self.dir / "calls.jsonl"
        if not calls.is_file():
            return 0
        return len(calls.read_text().splitlines()) - self.sent()

    def sent(self) -> int:
        return int((self.dir / "sent").read_text()) if (self.dir / "sent").is_file() else 0

    def uri(self) -> str | None:
        return (self.dir / "uri").read_text().strip() if (self.dir / "uri").is_file() else None

    def add(self, uri: str, method: str, args: tuple, kwargs: dict[str, Any]) -> None:
        if not (self.dir / "uri").is_file():
            (self.dir / "uri").write_text(uri)
        calls = self.dir / "calls.jsonl"
        n = len(calls.read_text().splitlines()) if calls.is_file() else 0
        line = {"method": method, "args": [self._encode(a, n) for a in args],
                "kwargs": {k: self._encode(v, n) for k, v in kwargs.items()}}
        if method in ("log_artifact", "log_artifacts"):  # the local file or folder: kept here
            local = Path(line["args"][1] if len(line["args"]) > 1 else line["kwargs"].pop("local_path", None)
                         or line["kwargs"].pop("local_dir"))
            dest = self.dir / f"files/{n}/{local.name}"
            if local.is_dir():
                dest.upload(local)
            else:
                dest.write_bytes(local.read_bytes())
            line["args"] = [line["args"][0], {KIND: "file", "v": f"files/{n}/{local.name}"}, *line["args"][2:]]
        calls.append_line(json.dumps(line))

    @staticmethod
    def _encode(value: Any, n: int) -> Any:
        from mlflow.entities import Metric, Param, RunTag

        if isinstance(value, (list, tuple)):
            return [Buffer._encode(v, n) for v in value]
        if isinstance(value, Metric):
            return {KIND: "metric", "v": [value.key, value.value, value.timestamp, value.step]}
        if isinstance(value, Param):
            return {KIND: "param", "v": [value.key, value.value]}
        if isinstance(value, RunTag):
            return {KIND: "tag", "v": [value.key, value.value]}
        if type(value).__name__ == "DataFrame":
            return {KIND: "table", "v": json.loads(value.to_json(orient="split", index=False))}
        return value

    def _decode(self, value: Any, tmp: Path) -> Any:
        from mlflow.entities import Metric, Param, RunTag

        if isinstance(value, list):
            return [self._decode(v, tmp) for v in value]
        if isinstance(value, dict) and KIND in value:
            kind, v = value[KIND], value["v"]
            if kind == "metric":
                return Metric(*v)
            if kind == "param":
                return Param(*v)
            if kind == "tag":
                return RunTag(*v)
            if kind == "table":
                import pandas as pd
                return pd.DataFrame(v["data"], columns=v["columns"])
            if kind == "file":
                src, dest = self.dir / v, tmp / v
                if src.is_file():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(src.read_bytes())
                else:
                    src.download(dest)
                return str(dest)
        return value

    def replay(self, client: Any, log: Callable[[str], None] = print) -> int:
        """Send the lines not sent yet, in order; returns how many. Metrics whose (run, key,
        step) the store already holds are left out (one history read per run and key). A line
        that fails is tried again once while the store answers, then set aside (:data:`FAILED`);
        raises :class:`Unreachable` where the store is away (the lines sent are counted in
        ``sent``)."""
        calls = self.dir / "calls.jsonl"
        if not calls.is_file():
            return 0
        lines, done = calls.read_text().splitlines(), self.sent()
        uri = client.tracking_uri
        known: dict[tuple[str, str], set[int]] = {}
        sent = 0
        with tempfile.TemporaryDirectory(prefix="goldnas-replay-") as tmp:
            for i, text in enumerate(lines[done:], start=done):
                line = json.loads(text)
                args = [self._decode(a, Path(tmp)) for a in line["args"]]
                kwargs = {k: self._decode(v, Path(tmp)) for k, v in line["kwargs"].items()}
                for attempt in (1, 2):
                    try:
                        _send_new(client, line["method"], args, kwargs, known)
                        break
                    except Exception as exc:
                        away = (not healthy(uri)) if store_kind(uri) == SERVER else is_outage(exc)
                        if away:
                            raise Unreachable(f"MLflow at {uri} unreachable ({exc})") from exc
                        known.clear()  # a half-sent batch: read the histories again
                        refused = getattr(exc, "get_http_status_code", lambda: 500)() < 500
                        if attempt == 2 or refused:
                            log(f"warning: MLflow at {uri} refused buffered {line['method']} ({exc}): "
                                f"set aside in {self.out / FAILED}")
                            (self.out / FAILED).append_line(json.dumps({"line": line, "error": str(exc)}))
                            break
                (self.dir / "sent").write_text(str(i + 1))
                sent += 1
        self.clear()
        return sent

    def clear(self) -> None:
        if self.dir.local is not None:
            shutil.rmtree(self.dir.local, ignore_errors=True)
        else:
            for name in self.dir.files():
                (self.dir / name).delete()


def _send_new(client: Any, method: str, args: list, kwargs: dict[str, Any],
              known: dict[tuple[str, str], set[int]]) -> None:
    """``client.method(*args, **kwargs)``, less the metrics whose (run, key, step) ``known`` (or
    the store, read once per run and key) already holds."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    if method not in ("log_batch", "log_metric"):
        getattr(client, method)(*args, **kwargs)
        return
    call = inspect.signature(getattr(MlflowClient, method)).bind(None, *args, **kwargs)
    call.apply_defaults()
    a = call.arguments
    run = a["run_id"]
    metrics = list(a["metrics"] or []) if method == "log_batch" else [
        Metric(a["key"], a["value"], a["timestamp"] or int(time.time() * 1000), a["step"] or 0)]

    def steps(key: str) -> set[int]:
        if (run, key) not in known:
            known[run, key] = {m.step for m in client.get_metric_history(run, key)}
        return known[run, key]

    new = [m for m in metrics if m.step not in steps(m.key)]
    if method == "log_batch" and (new or a["params"] or a["tags"]):
        client.log_batch(run, metrics=new, params=a["params"] or [], tags=a["tags"] or [])
    elif new:
        client.log_metric(run, a["key"], a["value"], timestamp=new[0].timestamp, step=new[0].step)
    for m in new:
        known[run, m.key].add(m.step)


class BufferedClient:
    """An ``MlflowClient`` for ``uri`` whose writes an outage buffers in ``out`` (see the module
    docstring). ``moment`` says where the run is ("epoch 7") for the console line. Pending
    lines of an earlier process (a resumed run) are replayed first."""

    def __init__(self, uri: str, out: "Path | Location | None", log: Callable[[str], None] = print):
        from mlflow.tracking import MlflowClient

        self.uri, self.log = uri, log
        self.buffer = Buffer(out) if out is not None and store_kind(uri) == SERVER else None
        self.client = MlflowClient(tracking_uri=uri)
        self.tracking_uri = self.client.tracking_uri
        self.moment = "the start"
        self.buffering = self.buffer is not None and self.buffer.pending() > 0
        self.probed = 0.0
        if self.buffering:
            self._try_replay()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if name not in WRITES or self.buffer is None:
            return attr
        return lambda *args, **kwargs: self._write(name, args, kwargs)

    def ask(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """A read (``get_run``, ``get_metric_history``...), or None while the server is away."""
        if self.buffering:
            return None
        try:
            return getattr(self.client, name)(*args, **kwargs)
        except Exception as exc:
            if self.buffer is None or not is_outage(exc, self.uri):
                raise
            return None

    def _write(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        # another client of this output (a copy of a retrain's callback) may be buffering:
        # nothing goes ahead of its lines
        self.buffering = self.buffering or (self.buffer.dir / "calls.jsonl").is_file()
        if self.buffering and time.monotonic() - self.probed >= PROBE_EVERY:
            self._try_replay()
        if not self.buffering:
            try:
                return getattr(self.client, name)(*args, **kwargs)
            except Exception as exc:
                if not is_outage(exc, self.uri):
                    raise
                self.buffering, self.probed = True, time.monotonic()
                self.log(f"MLflow at {self.uri} unreachable since {self.moment}: buffering in "
                         f"{self.buffer.dir}; the run goes on")
        self.buffer.add(self.uri, name, args, kwargs)
        return None

    def _try_replay(self) -> None:
        self.probed = time.monotonic()
        if not healthy(self.uri):
            return
        try:
            sent = self.buffer.replay(self.client, self.log)
        except Unreachable:
            return
        self.buffering = False
        self.log(f"MLflow at {self.uri} answers again: replayed {sent} items")

    def close(self) -> int:
        """At the run's end: replay what waits if the server answers; returns (and says) how
        many items still wait."""
        if not self.buffering:
            return 0
        self._try_replay()
        left = self.buffer.pending() if self.buffering else 0
        if left:
            self.log(f"MLflow at {self.uri} still unreachable: {left} items wait in {self.buffer.dir}; "
                     f"`python -m goldnas_ray.tracking.replay {self.buffer.out}` sends them")
        return left
