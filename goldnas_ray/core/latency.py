"""Measured latency of every part of a space's network, and the latency of any architecture as
their sum: the per-operator table behind ``search.cost=latency``.

GOLD-NAS's resource term takes any additive per-operator cost. :func:`measure` times, on one
device, every part a cost table charges separately (``Network.parts``: the stem, each live
cell's input preprocessing, every (cell, edge, operator)) on the very input it sees in the
full network (channels, resolution, stride), and the head (global pooling and classifier).
What a cell adds beyond its parts is timed too, per cell: one addition at its nodes' shape
(a node sums its inputs: n inputs, n - 1 additions) and the concatenation of its nodes. Then

    latency(architecture) = stem + head + sum over its live cells of (preprocessing used
                            + concatenation + additions x that cell's sums) + sum of its operators

Parts timed alone miss a share of the time a whole network takes (the Python around the
modules: each edge's and cell's call, the node sums' dispatch; memory the parts reuse warm);
given a few calibration architectures, :func:`measure` times them end to end and fits
measured = scale x sum of parts + constant by least squares (``correction``). Two numbers,
so that a noisy calibration cannot bend the prediction; the scale keeps the operators'
ratios, so the search's cost term (which reads the operators' entries) ranks alike.

Each figure is the minimum (or, asked for, the median) of ``repeats`` timed calls after
``warmup`` untimed ones, taken in rounds over all the parts (:func:`time_interleaved`), in eval
mode (batch norm with its running statistics) without
autograd, with the device synchronised around every GPU timing; the spread (the interquartile
range) is kept beside it. The minimum by default: on a shared CPU the timings of one forward
pass are bimodal (the digits network at batch 64, 100 passes on one thread: 25% of them
under 46 ms, the median 67 ms), and a median then jumps between the modes from one
measurement to the next, while the minimum does not.
``benchmarks/latency_check.py`` sets the predicted sums against end-to-end measurements.

A busy machine can still make a profile wrong (a spell that hits the late cells' parts, a
process on the same core that slows whole networks but not short parts), and a search would
optimise the wrong table quietly; so :func:`measure` checks each profile (:func:`check_profile`:
an operator's parts against each other, the calibration's scale against a sane range, its
residuals kept), takes a failing one again and then refuses it, naming what disagreed.

A table is keyed by what its shapes depend on: the space (cells, nodes, channels, stem,
operators), the input shape, the number of classes and the batch. :meth:`LatencyTable.check`
refuses a table made for anything else, naming the difference. Pure PyTorch: the callers
read and write the file, a local path or a storage URI, through the storage layer
(``pipelines/profile_latency.py`` writes it, its ``--out`` and ``--config`` opened with
``files.store.location``; a new search's driver reads it, ``run.loop.read_latency``, and hands
the table on by value to its workers and trials, whose checkpoints keep it for a resume);
:func:`parse_table` makes the table of its content.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import torch

from goldnas_ray.core.config import ConfigError
from goldnas_ray.core.genotype import Genotype
from goldnas_ray.core.space import OpKey

if TYPE_CHECKING:
    from goldnas_ray.core.config import SpaceConfig

FORMAT = "goldnas-latency/1"
SPACE_KEYS = ("num_cells", "num_nodes", "init_channels", "stem_multiplier", "operators", "stem")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class LatencyTableError(ConfigError):
    """A table that cannot serve the search or network it is asked about."""


def parse_table(content: "str | bytes", where: str) -> "LatencyTable":
    """The table in ``content``, the JSON of the file ``where`` (read by the caller);
    LatencyTableError naming the file when it is not a table."""
    where = f"latency table {where}"
    try:
        raw = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LatencyTableError(f"{where} is not readable JSON: {exc}") from None
    return LatencyTable.from_dict(raw, where)


def table_key(space: "SpaceConfig", input_shape: tuple[int, int, int], num_classes: int, batch: int) -> dict:
    """What a table's shapes depend on: another value of any of these makes another table."""
    return {"space": {k: getattr(space, k) for k in SPACE_KEYS}, "input_shape": list(input_shape),
            "num_classes": num_classes, "batch": batch}


def part_name(part: Hashable) -> str:
    """A part's key in the JSON: ``stem``, ``head``, ``pre/<cell>/<input>``,
    ``op/<cell>/<src>/<dst>/<operator>``."""
    if isinstance(part, OpKey):
        return f"op/{part.cell}/{part.src}/{part.dst}/{part.op}"
    if isinstance(part, tuple) and part[0] == "pre":
        return f"pre/{part[1]}/{part[2]}"
    return str(part)


@dataclass
class LatencyTable:
    """Milliseconds of every part of one space's network on one device, at one batch."""

    key: dict[str, Any]
    device: dict[str, Any]  # type, name, torch, threads, dtype, channels_last
    parts_ms: dict[str, float]  # part_name -> ms (the table's statistic: measured["statistic"])
    spread_ms: dict[str, float] = field(default_factory=dict)  # part_name -> interquartile range
    cells_ms: dict[int, dict[str, float]] = field(default_factory=dict)  # cell -> {"concat", "add"}
    measured: dict[str, Any] = field(default_factory=dict)  # warmup, repeats, seconds, full network
    correction: dict[str, float] = field(default_factory=dict)  # scale, constant (ms)
    checks: dict[str, Any] = field(default_factory=dict)  # the profile's checks' figures (check_profile)

    # ---- predictions -------------------------------------------------------------------
    def op_ms(self, key: OpKey) -> float:
        return self.parts_ms.get(part_name(key), 0.0)

    def latency_ms(self, geno: Genotype) -> float:
        """The predicted latency of ``geno``'s network (one batch of ``key["batch"]``): the sum
        of its parts, plus the fitted correction when the table has one."""
        c = self.correction
        return c.get("scale", 1.0) * self.parts_sum_ms(geno) + c.get("constant", 0.0)

    def parts_sum_ms(self, geno: Genotype) -> float:
        """The sum of the parts ``geno``'s network keeps (no correction)."""
        live = geno.live_cells()
        total = self.parts_ms["stem"] + self.parts_ms["head"]
        for k, cell in enumerate(geno.cells):
            if not live[k]:
                continue
            total += sum(self.parts_ms.get(f"pre/{k}/{src}", 0.0) for src in (0, 1) if cell.uses_input(src))
            ops = geno.op_keys_of(k)
            total += sum(self.op_ms(op) for op in ops)
            inputs: dict[int, int] = {}
            for op in ops:
                inputs[op.dst] = inputs.get(op.dst, 0) + 1
            overhead = self.cells_ms.get(k, {})
            total += overhead.get("concat", 0.0) + overhead.get("add", 0.0) * sum(n - 1 for n in inputs.values())
        return total

    def describe_checks(self) -> str:
        """The profile's checks in one line (a table made before them: says so)."""
        c = self.checks
        if not c:
            return "no checks recorded (a table made before goldnas-ray checked its profiles)"
        res = [abs(r) for r in c.get("residuals_pct", [])]
        fit = (f"scale {c['scale']:.3g} (range {c['scale_range'][0]:g}-{c['scale_range'][1]:g}), residuals "
               f"median {statistics.median(res):.1f}% max {max(res):.1f}% over {len(res)} networks"
               if res else "no calibration")
        return (f"worst same-operator ratio {c['same_op_worst_ratio']:.3g}x (limit {c['same_op_ratio_limit']:g}x: "
                f"{len(c['disagreeing'])} part(s) over), {fit}; profile {c['attempts']}")

    # ---- checks ------------------------------------------------------------------------
    def check(self, expected: dict[str, Any], where: str = "the latency table") -> None:
        """Refuse this table for a search or network keyed ``expected`` (:func:`table_key`)."""
        for name in ("input_shape", "num_classes", "batch"):
            if self.key.get(name) != expected[name]:
                raise LatencyTableError(f"{where} was made for {name} {self.key.get(name)}, not {expected[name]}: "
                                        f"make one with pipelines/profile_latency.py for this config")
        mine = self.key.get("space", {})
        for name, value in expected["space"].items():
            same = (sorted(mine.get(name) or []) == sorted(value) if name == "operators"  # keyed by name
                    else mine.get(name) == value)
            if not same:
                raise LatencyTableError(f"{where} was made for space.{name}={mine.get(name)}, not {value}: "
                                        f"make one with pipelines/profile_latency.py for this config")

    def check_covers(self, full: Genotype, where: str = "the latency table") -> None:
        """Refuse a table without an entry for every part of ``full`` (a space's whole
        network) and every one of its cells: a missing entry would predict 0 ms."""
        names = ["stem", "head"] + [f"pre/{k}/{src}" for k, cell in enumerate(full.cells) for src in (0, 1)
                                    if cell.uses_input(src)]
        names += [part_name(op) for k in range(len(full.cells)) for op in full.op_keys_of(k)]
        missing = [n for n in names if n not in self.parts_ms]
        missing += [f"cell {k}" for k in range(len(full.cells)) if k not in self.cells_ms]
        if missing:
            raise LatencyTableError(f"{where} has no entry for {len(missing)} part(s) of this space, "
                                    f"e.g. {missing[0]}: make one with pipelines/profile_latency.py")

    # ---- JSON --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps({  # a copy: editing it leaves the table as it is
            "format": FORMAT, "key": self.key, "device": self.device, "measured": self.measured,
            "correction": self.correction, "checks": self.checks, "parts_ms": self.parts_ms,
            "spread_ms": self.spread_ms,
            "cells_ms": {str(k): v for k, v in self.cells_ms.items()}}))

    @classmethod
    def from_dict(cls, raw: Any, where: str = "the latency table") -> "LatencyTable":
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise LatencyTableError(f"{where} is not a goldnas-ray latency table (format {FORMAT})")
        try:
            parts = {str(k): float(v) for k, v in raw["parts_ms"].items()}
            cells = {int(k): {n: float(x) for n, x in v.items()} for k, v in raw.get("cells_ms", {}).items()}
            table = cls(dict(raw["key"]), dict(raw["device"]), parts,
                        {str(k): float(v) for k, v in raw.get("spread_ms", {}).items()}, cells,
                        dict(raw.get("measured", {})),
                        {str(k): float(v) for k, v in raw.get("correction", {}).items()},
                        dict(raw.get("checks", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LatencyTableError(f"{where} is malformed: {exc!r}") from None
        for name in ("stem", "head"):
            if name not in parts:
                raise LatencyTableError(f"{where} has no {name!r} entry")
        if any(v < 0 for v in parts.values()):
            raise LatencyTableError(f"{where} holds a negative latency")
        if table.correction.get("scale", 1.0) <= 0:
            raise LatencyTableError(f"{where} has a correction scale of {table.correction['scale']:g}: "
                                    f"it must be positive (make the table again)")
        return table


# ---- measuring --------------------------------------------------------------------------------
def device_description(device: torch.device, dtype: str, channels_last: bool) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_model()
    return {"type": device.type, "name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "dtype": dtype, "channels_last": channels_last}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


STATISTICS = ("median", "min")


def summarise(times: Sequence[float], statistic: str = "min") -> tuple[float, float]:
    """(the ``statistic`` of ``times``, their interquartile range): the median, or the minimum,
    the usual figure where other work on the machine only ever adds time (a shared or virtual
    CPU, an allocator that sometimes returns memory to the system)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return (statistics.median(times) if statistic == "median" else min(times)), q[2] - q[0]


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for ``device`` to finish (nothing on a CPU): that device's, not the current
    one's."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# on a GPU, several calls between two synchronisations: one call of a small operator is
# shorter than the synchronisation itself
CALLS_PER_SAMPLE = {"cuda": 10}


def time_interleaved(calls: Sequence[Callable[[], Any]], device: torch.device, warmup: int, repeats: int,
                     rounds: int | None = None, statistic: str = "min", per_sample: int | None = None
                     ) -> list[tuple[float, float]]:
    """(:func:`summarise` of ``repeats`` timed calls, in ms) of each of ``calls``, after
    ``warmup`` untimed ones each. The calls are taken in ``rounds`` (default: one call of each
    per round) over all of them, in a fresh order each round, so that a slow spell of the
    machine hits every call alike instead of the ones timed during it; on a GPU the device is
    synchronised around each sample of several calls."""
    sync, per_sample = synchronizer(device), per_sample or CALLS_PER_SAMPLE.get(device.type, 1)
    for fn in calls:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in calls]
    order = list(range(len(calls)))
    shuffle = torch.Generator().manual_seed(1)
    rounds = max(1, min(rounds or repeats, repeats))
    for r in range(rounds):  # ``repeats`` samples in all, spread over the rounds
        order = [order[i] for i in torch.randperm(len(order), generator=shuffle).tolist()]
        for i in order:
            for _ in range(repeats // rounds + (1 if r < repeats % rounds else 0)):
                times[i].append(elapsed_ms(calls[i], sync, per_sample))
    return [summarise(t, statistic) for t in times]


def elapsed_ms(fn: Callable[[], Any], sync: Callable[[], None], calls: int = 1) -> float:
    """Milliseconds per call of ``calls`` calls of ``fn``, the device synchronised around them."""
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) * 1e3 / calls


# The checks a profile passes before it is written (see the module). On a quiet 2-core CPU
# (the digits default, batch 1 and 64, docs/latency.md) the worst same-operator ratio was
# 1.7-2.0x and the scale 0.99-1.19; a busy spell once made 140x and a scale of 0.022, and a
# busy process on the profiler's core a scale of 2.3-2.6 (whole networks slowed, short parts not).
SAME_OP_RATIO = 10.0  # a part may cost at most this x the same operator's on an input as large or larger
SCALE_RANGE = (0.5, 2.0)  # the calibration's scale: the parts miss the Python around them, not half the time
ATTEMPTS = 3  # profiles taken before a table that fails the checks is refused


def same_op_ratios(parts_ms: dict[str, float], shapes: dict[str, tuple[int, int]]
                   ) -> dict[str, tuple[str, float]]:
    """Each operator part's worst ratio: part -> (reference, part / reference) over the parts
    of the same operator and stride whose input is as large or larger (``shapes``: part ->
    (input elements, stride))."""
    groups: dict[tuple[str, int], list[str]] = {}
    for name, (_, stride) in shapes.items():
        groups.setdefault((name.rsplit("/", 1)[-1], stride), []).append(name)
    worst = {}
    for names in groups.values():
        for part in names:
            worst[part] = max(((ref, parts_ms[part] / max(parts_ms[ref], 1e-9)) for ref in names
                               if shapes[part][0] <= shapes[ref][0]), key=lambda f: f[1])
    return worst


def check_profile(table: LatencyTable, shapes: dict[str, tuple[int, int]], residuals_pct: Sequence[float],
                  ratio: float = SAME_OP_RATIO, scale_range: tuple[float, float] = SCALE_RANGE
                  ) -> tuple[dict[str, Any], list[str]]:
    """The checks' figures (kept in the table as ``checks``) and what failed, in words."""
    worst = same_op_ratios(table.parts_ms, shapes)
    bad = sorted(((p, r, x) for p, (r, x) in worst.items() if x > ratio), key=lambda f: -f[2])
    top = max(worst.items(), key=lambda w: w[1][1], default=("", ("", 1.0)))
    scale = table.correction.get("scale")
    figures = {"same_op_ratio_limit": ratio, "same_op_worst_ratio": round(top[1][1], 2),
               "same_op_worst": [top[0], top[1][0]], "disagreeing": [[p, r, round(x, 1)] for p, r, x in bad],
               "scale": scale, "scale_range": list(scale_range),
               "residuals_pct": [round(r, 2) for r in residuals_pct]}
    failures = [f"{p} took {x:.0f}x {r}" for p, r, x in bad[:5]]
    if len(bad) > 5:
        failures.append(f"{len(bad) - 5} more part(s) like them")
    if bad:
        failures[0] = f"same operator on an input as large or larger: {failures[0]}"
    if scale is not None and not scale_range[0] <= scale <= scale_range[1]:
        failures.append(f"the calibration's scale {scale:.3g} is outside {scale_range[0]:g}-{scale_range[1]:g}")
    return figures, failures


@torch.no_grad()
def measure(space: "SpaceConfig", input_shape: tuple[int, int, int], num_classes: int, batch: int,
            device: torch.device | str = "cpu", dtype: str = "float32", channels_last: bool = True,
            warmup: int = 5, repeats: int = 30, calibration: Sequence[Genotype] = (),
            statistic: str = "min", log: Callable[[str], None] = lambda _: None,
            attempts: int = ATTEMPTS, check: bool = True) -> LatencyTable:
    """Time every part of ``space``'s full network at ``batch`` on ``device``, then the
    ``calibration`` architectures (and the full one) end to end to fit the correction, and
    check the profile (:func:`check_profile`): one that fails is taken again, up to
    ``attempts`` profiles in all, then refused (LatencyTableError naming what disagreed).
    ``check=False`` keeps the first profile whatever its checks say (their figures are kept)."""
    started = time.perf_counter()
    for attempt in range(1, max(1, attempts) + 1):
        table, shapes, residuals = _profile(space, input_shape, num_classes, batch, torch.device(device), dtype,
                                            channels_last, warmup, repeats, calibration, statistic, log)
        table.checks, failures = check_profile(table, shapes, residuals)
        table.checks["attempts"] = attempt
        table.measured["seconds"] = round(time.perf_counter() - started, 1)
        log(f"  checks: {table.describe_checks()}")
        if failures:
            log(f"  profile {attempt} of {attempts if check else 1} disagrees with itself: " + "; ".join(failures))
        if not check or not failures:
            return table
    raise LatencyTableError(
        f"the machine looked busy while profiling: {attempts} profile(s) disagreed with themselves ("
        + "; ".join(failures) + "). No table was written: profile again when the machine is quiet "
        "(fewer --threads than free cores helps)")


def _profile(space: "SpaceConfig", input_shape: tuple[int, int, int], num_classes: int, batch: int,
             device: torch.device, dtype: str, channels_last: bool, warmup: int, repeats: int,
             calibration: Sequence[Genotype], statistic: str, log: Callable[[str], None]
             ) -> tuple[LatencyTable, dict[str, tuple[int, int]], list[float]]:
    """One profile: the table, each operator part's (input elements, stride), and the
    calibration's residuals (%, predicted against measured, the full network's first)."""
    from goldnas_ray.core.discrete import build_network
    from goldnas_ray.core.network import seeded

    c, h, _ = input_shape
    full = Genotype.full(space.num_cells, space.num_nodes, space.operators, space.init_channels,
                         space.stem_multiplier, h, c, num_classes, space.stem)
    with seeded(0):
        net = build_network(full)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device, dtype=DTYPES[dtype], memory_format=fmt).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, h, generator=gen).to(device, DTYPES[dtype]).contiguous(memory_format=fmt)

    calls, shapes, cells = _part_calls(net, x, space.num_nodes, fmt)
    log(f"  timing {len(calls)} parts in {repeats} interleaved rounds")
    timed = dict(zip(calls, time_interleaved(list(calls.values()), device, warmup, repeats, statistic=statistic)))
    spread = {name: s for name, (_, s) in timed.items() if name != "network"}
    parts_ms = {name: m for name, (m, _) in timed.items() if not name.startswith(("cell/", "network"))}
    cells_ms = {k: {"concat": timed[f"cell/{k}/concat"][0], "add": timed[f"cell/{k}/add"][0]} for k in cells}
    table = LatencyTable(table_key(space, input_shape, num_classes, batch),
                         device_description(device, dtype, channels_last), parts_ms, spread, cells_ms)
    residuals: list[float] = []
    if calibration:
        log(f"  timing {len(calibration)} calibration architectures end to end")
        genos = [full, *calibration]
        measured = [m for m, _ in measure_networks(genos, batch, device, dtype, channels_last, warmup, repeats,
                                                   statistic=statistic)]
        table.correction = fit_correction(table, genos, measured)
        residuals = [100 * (table.latency_ms(g) - m) / m for g, m in zip(genos, measured)]
    end_to_end, end_spread = timed["network"]
    table.measured = {"warmup": warmup, "repeats": repeats, "statistic": statistic, "calibration": len(calibration),
                      "full_network_ms": end_to_end, "full_network_spread_ms": end_spread,
                      "full_network_predicted_ms": table.latency_ms(full)}
    return table, shapes, residuals


def _part_calls(net: Any, x: torch.Tensor, num_nodes: int, fmt: torch.memory_format
                ) -> tuple[dict[str, Callable[[], Any]], dict[str, tuple[int, int]], list[int]]:
    """What a profile times, each a call without arguments: every part of ``net`` on the input it
    gets when ``net`` runs on ``x`` (caught in one forward pass), each live cell's concatenation
    and addition of its nodes' outputs, the head, and the whole network ("network"). Also each
    operator part's (input elements, stride), and the live cells."""
    inputs: dict[str, tuple] = {}
    shapes: dict[str, tuple[int, int]] = {}
    parts = {part_name(label): module for label, module in net.parts()}

    def caught(name: str, args: tuple, out: torch.Tensor) -> None:
        inputs[name] = args
        if name.startswith("op/"):
            shapes[name] = (args[0][0].numel(), max(1, args[0].shape[-1] // out.shape[-1]))
    hooks = [module.register_forward_hook(lambda _m, args, out, name=name: caught(name, args, out))
             for name, module in parts.items() if name != "classifier"]
    nodes: dict[int, torch.Tensor] = {}
    for k, cell in enumerate(net.cells):
        if net.live[k]:
            hooks.append(cell.register_forward_hook(
                lambda _m, _args, out, k=k: nodes.__setitem__(k, out)))
    features, _ = net.forward_features(x)
    for hook in hooks:
        hook.remove()

    calls = {name: (lambda module=parts[name], args=inputs[name]: module(*args))
             for name in parts if name != "classifier"}
    calls["head"] = lambda: net.forward_head(features)
    for k, out in nodes.items():
        chunks = [t.contiguous(memory_format=fmt) for t in out.chunk(num_nodes, dim=1)]
        calls[f"cell/{k}/concat"] = lambda chunks=chunks: torch.cat(chunks, dim=1)
        calls[f"cell/{k}/add"] = lambda chunks=chunks: chunks[0] + chunks[1]
    calls["network"] = lambda: net(x)
    return calls, shapes, list(nodes)


def fit_correction(table: LatencyTable, genos: Sequence[Genotype], measured_ms: Sequence[float]) -> dict[str, float]:
    """Least squares of measured = scale x sum of parts + constant."""
    a = torch.tensor([[table.parts_sum_ms(g), 1.0] for g in genos], dtype=torch.float64)
    b = torch.tensor(list(measured_ms), dtype=torch.float64).unsqueeze(1)
    scale, constant = torch.linalg.lstsq(a, b, driver="gelsd").solution.squeeze(1).tolist()
    return {"scale": scale, "constant": constant}


@torch.no_grad()
def measure_networks(genos: Sequence[Genotype], batch: int, device: torch.device | str = "cpu",
                     dtype: str = "float32", channels_last: bool = True, warmup: int = 5, repeats: int = 30,
                     rounds: int = 5, statistic: str = "min") -> list[tuple[float, float]]:
    """End-to-end latency of each genotype's network, as :func:`measure` times the parts:
    (:func:`summarise` of ``repeats`` forward passes at ``batch``) in ms. The passes
    are taken in ``rounds`` interleaved rounds (every network a few passes per round, in a
    fresh order each round), so a slow spell of the machine spreads over all the networks
    instead of biasing the ones measured during it."""
    from goldnas_ray.core.discrete import build_network
    from goldnas_ray.core.network import seeded

    device = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    calls = []
    gen = torch.Generator().manual_seed(0)
    for geno in genos:
        with seeded(0):
            net = build_network(geno).to(device, dtype=DTYPES[dtype], memory_format=fmt).eval()
        x = torch.randn(batch, geno.in_channels, geno.input_size, geno.input_size,
                        generator=gen).to(device, DTYPES[dtype]).contiguous(memory_format=fmt)
        calls.append(lambda net=net, x=x: net(x))
    return time_interleaved(calls, device, warmup, repeats, rounds, statistic, per_sample=1)
