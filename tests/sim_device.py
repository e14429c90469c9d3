"""A simulated second device for CPU-only tests of ``TrainConfig.feature_device``.

This machine has only a CPU, so a forgotten ``.to(device)`` between the base model and the feature
model cannot fail on real hardware here. Inside :func:`simulated_device` every tensor created on, or
moved to, the ``lazy`` device (:data:`SIM`; a device type torch knows but never uses by itself on a
CPU build, unlike ``meta``, which torch uses internally for shape inference) is a :class:`SimTensor`:
it *reports* ``lazy`` but holds real CPU numbers, so the feature model trains with the bits it would
have on the CPU (results can be compared for equality), while every op that mixes a simulated tensor
with a CPU tensor raises :class:`DeviceMismatch`, as a CUDA kernel does for tensors on two devices (a
0-dim CPU tensor may join as an input, as CUDA allows CPU scalars, but not as the tensor written to).
Moves (``.to``, ``.cpu()``, ``copy_``) and reading numbers (``.item()``, ``float()``, ``tolist()``)
work as on a real device; ``.numpy()`` of a simulated tensor fails, as it does for a CUDA tensor.

Limits: ``torch.optim.AdamW(fused=True)`` refuses parameters of a device type it has no fused kernel
for, so :func:`simulated_device` adds ``lazy`` to torch's list while it is active; ``torch.tensor`` /
``as_tensor`` of Python data on ``lazy`` are made on the CPU and moved; ``torch.Generator`` on ``lazy``
does not exist (``optimizer_state="bf16-sr"`` cannot be simulated); ``lazy`` is not an accepted
``feature_device``, so tests allow it through ``config.FEATURE_DEVICE_TYPES``. Only the feature side
can be simulated: the base model stays on the CPU (its ``ParamMap`` reads and the jvp run there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing
from torch.utils._pytree import tree_flatten, tree_map

#: what simulated tensors report as their device
SIM = torch.device("lazy")

_aten = torch.ops.aten
#: ops that legally take tensors of two devices (moves and reading a number)
_CROSS = {_aten._to_copy.default, _aten.copy_.default, _aten._local_scalar_dense.default}


class DeviceMismatch(RuntimeError):
    """An op got tensors of the simulated device and of the CPU."""


class SimTensor(torch.Tensor):
    """A tensor on the simulated device: reports ``lazy``, computes on ``elem`` (a CPU tensor)."""

    elem: torch.Tensor
    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> SimTensor:
        r = torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(),  # type: ignore[attr-defined]
                                                storage_offset=elem.storage_offset(), dtype=elem.dtype, device=SIM,
                                                requires_grad=elem.requires_grad)
        r.elem = elem
        return r

    def __repr__(self) -> str:  # type: ignore[override]
        return f"SimTensor({self.elem!r})"

    def tolist(self) -> Any:  # a CUDA tensor's tolist copies to the host, so this one does too
        return self.elem.tolist()

    def __tensor_flatten__(self) -> tuple[list[str], None]:
        return ["elem"], None

    @staticmethod
    def __tensor_unflatten__(inner: dict[str, torch.Tensor], meta: Any, size: Any, stride: Any) -> SimTensor:
        return SimTensor(inner["elem"])

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        raise RuntimeError(f"{func} reached a simulated tensor outside SimulatedDevice()")


def _is_sim_device(dev: Any) -> bool:
    return dev is not None and torch.device(dev).type == SIM.type


class SimulatedDevice(TorchDispatchMode):
    """While active, ``lazy`` is a simulated device with real numbers (see the module docstring).

    ``mixes`` counts the ops that raised :class:`DeviceMismatch`; ``sim_ops`` the ops run on the device.
    """

    def __init__(self) -> None:
        super().__init__()
        self.mixes = 0
        self.sim_ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        sims = [t for t in tensors if isinstance(t, SimTensor)]
        # CUDA lets a 0-dim CPU tensor join an op as an input, never as the tensor written to
        written = [a for a, arg in zip(args, func._schema.arguments) if arg.alias_info is not None
                   and arg.alias_info.is_write and isinstance(a, torch.Tensor)]
        written += [t for t in tree_flatten(kwargs.get("out"))[0] if isinstance(t, torch.Tensor)]
        plain = [t for t in tensors if not isinstance(t, SimTensor)
                 and (t.dim() > 0 or any(t is w for w in written))]
        if sims and plain and func not in _CROSS:
            self.mixes += 1
            raise DeviceMismatch(f"{func}: tensors on the simulated device ({SIM}) and on the CPU "
                                 f"(shapes {[tuple(t.shape) for t in plain][:3]}) in one op; a .to(device) is missing")
        to_sim = _is_sim_device(kwargs.get("device"))
        if not sims and not to_sim:  # nothing on the simulated device: the op as it is
            return func(*args, **kwargs)
        moves_off = "device" in kwargs and kwargs["device"] is not None and not to_sim
        u_args, u_kwargs = tree_map(lambda x: x.elem if isinstance(x, SimTensor) else x, (args, kwargs))
        if to_sim:
            u_kwargs = {**u_kwargs, "device": torch.device("cpu")}
        out = func(*u_args, **u_kwargs)
        if func is _aten._local_scalar_dense.default:
            return out
        if func is _aten.copy_.default:
            wrap = isinstance(args[0], SimTensor)  # a copy lands on its destination's device
        else:
            wrap = to_sim or (bool(sims) and not moves_off)
        if wrap:
            self.sim_ops += 1
            out = tree_map(lambda x: SimTensor(x) if isinstance(x, torch.Tensor) and not isinstance(x, SimTensor)
                           else x, out)
        if wrap != bool(sims):  # a move onto or off the device: a copy, nothing aliases
            return out
        return return_and_correct_aliasing(func, args, kwargs, out)


class _DataOnSimulatedDevice(TorchFunctionMode):
    """``torch.tensor`` / ``as_tensor`` / ``asarray`` of Python data with ``device`` on the simulated device: made
    on the CPU, then moved (they build the tensor below the dispatch mode, on the named backend)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and _is_sim_device(kwargs.get("device")):
            return func(*args, **{**kwargs, "device": torch.device("cpu")}).to(SIM)
        return func(*args, **kwargs)


@contextlib.contextmanager
def simulated_device() -> Iterator[SimulatedDevice]:
    """``with simulated_device() as sim:`` the ``lazy`` device computes (see :class:`SimulatedDevice`)."""
    import torch.optim.optimizer as optimizer_module

    supported = optimizer_module._get_fused_kernels_supported_devices

    def with_sim() -> list[str]:
        return [*supported(), SIM.type]

    optimizer_module._get_fused_kernels_supported_devices = with_sim  # type: ignore[assignment]
    try:
        with SimulatedDevice() as mode, _DataOnSimulatedDevice():
            yield mode
    finally:
        optimizer_module._get_fused_kernels_supported_devices = supported  # type: ignore[assignment]


def to_cpu(t: torch.Tensor) -> torch.Tensor:
    """The CPU numbers of ``t`` (a simulated or a CPU tensor), outside or inside the mode."""
    return t.elem.detach().clone() if isinstance(t, SimTensor) else t.detach().clone()
