"""Count what would make a training step wait for a GPU, on any device (the CPU included).

On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` catches the synchronising operations
themselves. This is the device-agnostic hook for machines without one: it follows which tensors
live "on the device" (the model's parameters and buffers, whatever ``.to(device)`` returned,
and everything computed from them) and counts, while it is active:

- reads: a device value brought to the host (``.item()``, ``float()``, ``bool()``:
  ``aten._local_scalar_dense``; ``.cpu()``, ``.numpy()``, ``.tolist()`` of a device tensor; ``nonzero``, ``masked_select``, boolean-mask indexing, whose
  output size depends on device values);
- blocking copies: ``tensor.to(device)`` of a host tensor without ``non_blocking=True``, and
  ``torch.tensor(data, device=...)`` / ``torch.as_tensor(..., device=...)``, which copy host data
  and wait;
- host tensors mixed into device arithmetic without a copy (a CUDA op would refuse them);
  0-dimensional ones (Python scalars) are fine.

Host-side work, such as drawing random numbers with a CPU generator, is not counted. Nor is
``.to("cpu")`` of a device tensor: on a CPU machine the device is the CPU, and that call is
where a batch is put on it.
"""
from __future__ import annotations

import weakref
from collections import Counter
from typing import Any, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

READS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default"}
# factories that copy host data to the device (and wait), and ones that fill a tensor there
COPYING = ("tensor", "as_tensor")
FILLING = ("zeros", "ones", "empty", "full", "arange", "linspace", "rand", "randn", "randint", "randperm")


class DeviceTransfers(TorchDispatchMode):
    """``with DeviceTransfers(model) as t: ...``; then ``t.counts`` (a Counter of kinds) and
    ``t.where`` (the ops, for messages)."""

    def __init__(self, modules: Iterable[torch.nn.Module] = ()):
        super().__init__()
        self._device: dict[int, weakref.ref] = {}  # id -> the tensor (tensors compare elementwise)
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                self.mark(t)
        self.counts: Counter = Counter()
        self.where: list[str] = []

    def _count(self, kind: str, what: str) -> None:
        self.counts[kind] += 1
        self.where.append(f"{kind}: {what}")

    def mark(self, t: torch.Tensor) -> None:
        """``t`` lives on the device from now on."""
        key = id(t)
        self._device[key] = weakref.ref(t, lambda _, key=key: self._device.pop(key, None))

    def on_device(self, t: Any) -> bool:
        ref = self._device.get(id(t)) if isinstance(t, torch.Tensor) else None
        return ref is not None and ref() is t

    # ---- Python-level entry points: .to(device) and tensor creation on a device -------------
    def __enter__(self):
        self._to = torch.Tensor.to
        self._factories = {name: getattr(torch, name) for name in COPYING + FILLING}
        mode = self

        def to(tensor, *args, **kwargs):
            moves = any(isinstance(a, (torch.device, str)) or isinstance(a, torch.Tensor) for a in args) \
                or "device" in kwargs
            out = mode._to(tensor, *args, **kwargs)
            if moves:
                if not kwargs.get("non_blocking", False) and not mode.on_device(tensor):
                    mode._count("blocking copy", f"Tensor.to{args}")
                mode.mark(out)
            return out

        def creating(factory, name):
            def make(*args, **kwargs):
                out = factory(*args, **kwargs)
                if kwargs.get("device") is not None:  # made where the step runs
                    if name in COPYING:
                        mode._count("blocking copy", f"torch.{name}(..., device=...)")
                    mode.mark(out)
                return out
            return make

        def reading(method, name):
            def read(tensor, *args, **kwargs):
                if mode.on_device(tensor):
                    mode._count("read", f"Tensor.{name}()")
                return method(tensor, *args, **kwargs)
            return read

        self._readers = {name: getattr(torch.Tensor, name) for name in ("cpu", "numpy", "tolist")}
        for name, method in self._readers.items():
            setattr(torch.Tensor, name, reading(method, name))
        torch.Tensor.to = to
        for name, factory in self._factories.items():
            setattr(torch, name, creating(factory, name))
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.to = self._to
        for name, method in self._readers.items():
            setattr(torch.Tensor, name, method)
        for name, factory in self._factories.items():
            setattr(torch, name, factory)
        return super().__exit__(*exc)

    # ---- every aten op ------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        device_inputs = [t for t in tensors if self.on_device(t)]
        name = str(func)
        if device_inputs:
            if name in READS or (name == "aten.index.Tensor" and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in flat[1:])):
                self._count("read", name)
            strays = [t for t in tensors if not self.on_device(t) and t.dim() > 0]
            if strays and name not in ("aten.copy_.default", "aten._to_copy.default"):
                self._count("host tensor in a device op", name)
        out = func(*args, **kwargs)
        if device_inputs:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.mark(t)
        return out
