"""The tensors an averager is given, and the host arrays it codes them as.

Every averager takes ``ParamsLike`` (``model.parameters()``, ``model.named_parameters()``,
tensors or pairs), normalises it with :func:`named_tensors`, and works on CPU numpy
copies in the *wire dtype* (:func:`wire_dtype`: float32, float64 for float64 tensors).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tenfold.errors import ConfigError, InputTypeError

__all__ = [
    "ParamsLike",
    "array_dict",
    "copy_back",
    "copy_parts",
    "empty_like_wire",
    "host_arrays",
    "named_tensors",
    "nonfinite_names",
    "require_parameters",
    "shares_memory",
    "tensor_dict",
    "uses_scale",
    "wire_dtype",
    "wire_layout",
    "zeros_like_wire",
]


#: ``model.parameters()``, ``model.named_parameters()``, a list of tensors or of pairs.
ParamsLike = Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


def require_parameters(named: list[tuple[str, torch.Tensor]]) -> None:
    """An empty model is a caller's mistake (often a spent ``parameters()`` generator)."""
    if not named:
        raise ConfigError(
            "no parameters to average (an empty model, or a parameters() iterator already consumed)"
        )


def named_tensors(params: ParamsLike) -> list[tuple[str, torch.Tensor]]:
    """Normalise ``params`` to ``[(name, tensor), ...]``; unnamed tensors get ``"0"``, ``"1"``...

    Raises:
        tenfold.InputTypeError: for a mix of named and unnamed items, or a non-tensor.
        tenfold.ConfigError: for duplicate names.
    """
    if isinstance(params, torch.nn.Module):
        raise InputTypeError(
            "params: pass model.named_parameters() (or model.parameters()), not the module "
            f"itself ({type(params).__name__})"
        )
    if isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
        raise InputTypeError(
            "params: an iterable of tensors or of (name, tensor) pairs, e.g. "
            f"model.named_parameters(), got {type(params).__name__}"
        )
    items: list[Any] = list(params)
    named = [isinstance(item, tuple) for item in items]
    if any(named) and not all(named):
        raise InputTypeError("params: mix of tensors and (name, tensor) pairs")
    pairs = list(items) if items and named[0] else [(str(i), t) for i, t in enumerate(items)]
    out: list[tuple[str, torch.Tensor]] = []
    for name, tensor in pairs:
        if not isinstance(tensor, torch.Tensor):
            raise InputTypeError(
                f"params: {name!r} is a {type(tensor).__name__}, not a torch.Tensor"
            )
        out.append((str(name), tensor))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"params: duplicate tensor names in {names}")
    return out


def wire_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor travels and is accumulated in: float64 stays, others float32.

    The codec's accumulators are float32/float64, and a packet's dtype must equal its
    accumulator's; float16/bfloat16 parameters are therefore coded as float32 (exact) and
    the mean is rounded back to their dtype when copied in.
    """
    if not dtype.is_floating_point:
        raise InputTypeError(f"can only average floating-point tensors, got {dtype}")
    return torch.float64 if dtype == torch.float64 else torch.float32


def host_arrays(named: Sequence[tuple[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """CPU numpy views in the wire dtype (copies only for device/non-contiguous/half tensors)."""
    return {
        name: t.detach().to("cpu", wire_dtype(t.dtype)).contiguous().numpy() for name, t in named
    }


def shares_memory(tensor: torch.Tensor, array: np.ndarray) -> bool:
    """Whether ``array`` (from :func:`host_arrays`) is ``tensor``'s own memory (a CPU,
    contiguous tensor of the wire dtype), so that writing it writes the tensor."""
    return (
        tensor.device.type == "cpu"
        and tensor.is_contiguous()
        and array.ctypes.data == tensor.data_ptr()
        and array.nbytes == tensor.numel() * tensor.element_size()
        and tensor.dtype == wire_dtype(tensor.dtype)
    )


def nonfinite_names(named: Sequence[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding NaN or Inf (numpy: ~15x faster than torch.isfinite)."""
    return [name for name, a in host_arrays(named).items() if not np.isfinite(a).all()]


def tensor_dict(arrays: Mapping[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    """Host arrays as CPU torch tensors (copies), for a safetensors checkpoint; None stays None."""
    return None if arrays is None else {n: torch.from_numpy(a.copy()) for n, a in arrays.items()}


def array_dict(tensors: Mapping[str, Any] | None) -> dict[str, np.ndarray] | None:
    """A checkpoint's tensors (or arrays) back as contiguous numpy copies; None stays None."""
    if tensors is None:
        return None
    return {
        n: np.ascontiguousarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t).copy()
        for n, t in tensors.items()
    }


def _wire_numpy(dtype: torch.dtype) -> type[np.floating[Any]]:
    return np.float64 if wire_dtype(dtype) == torch.float64 else np.float32


def zeros_like_wire(named: Sequence[tuple[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Fresh zero accumulators: float32 (float64 for float64 tensors), the tensors' shapes."""
    return {name: np.zeros(tuple(t.shape), _wire_numpy(t.dtype)) for name, t in named}


def empty_like_wire(named: Sequence[tuple[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """As :func:`zeros_like_wire`, uninitialised (for a caller that writes every value)."""
    return {name: np.empty(tuple(t.shape), _wire_numpy(t.dtype)) for name, t in named}


def wire_layout(
    named: Sequence[tuple[str, torch.Tensor]],
) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """``(name, shape, numpy dtype string)`` of each accumulator :func:`zeros_like_wire`
    would make, in order (without making them)."""
    return tuple((n, tuple(t.shape), np.dtype(_wire_numpy(t.dtype)).str) for n, t in named)


def copy_back(named: Sequence[tuple[str, torch.Tensor]], acc: Mapping[str, np.ndarray]) -> None:
    """Write the averaged arrays into the parameters in place (cast to each tensor's dtype and device)."""
    with torch.no_grad():
        for name, t in named:
            t.copy_(torch.from_numpy(acc[name]))


def copy_parts(
    tensors: Mapping[str, torch.Tensor], parts: Sequence[Any], values: Mapping[str, np.ndarray]
) -> None:
    """Write one chunk's values into the parameters in place (cast to each tensor's dtype
    and device). ``parts``: :class:`~tenfold.distributed.protocol.chunks.Part` s;
    ``values``: part key -> array (a whole tensor's shape, or a flat piece)."""
    with torch.no_grad():
        for p in parts:
            t = tensors[p.tensor]
            src = torch.from_numpy(values[p.key])
            if p.whole:
                t.copy_(src)
            elif t.is_contiguous():
                t.view(-1)[p.lo : p.hi].copy_(src)
            else:  # no flat view of it: through a flat copy (rare: parameters are contiguous)
                flat = t.detach().reshape(-1).clone()
                flat[p.lo : p.hi].copy_(src)
                t.copy_(flat.view(t.shape))


def uses_scale(policy: Any) -> bool:
    """Whether the policy takes its step from an RMS hint (RelativeStep)."""
    return bool(getattr(policy, "uses_scale", False))
