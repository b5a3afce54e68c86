"""Read NVIDIA StyleGAN2-ADA / StyleGAN3 ``.pkl`` network files as pure data.

NVIDIA's training code writes its snapshots (``network-snapshot-*.pkl``,
``stylegan3-t-ffhq-1024x1024.pkl``, ...) with plain ``pickle.dump`` of a dict
such as ``{'G': ..., 'D': ..., 'G_ema': ..., 'augment_pipe': ...,
'training_set_kwargs': {...}}``.  Each network is an instance of a class made by
NVIDIA's ``torch_utils.persistence`` module; it pickles as a call of
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta``
holds the full Python source of the defining module.  Loading such a file with
``pickle.load`` would execute that source (and anything else the file asks for).

This module never does that.  A restricted unpickler resolves only an explicit
list of globals, each mapped to a function of ours that builds plain data:

* ``torch_utils.persistence._reconstruct_persistent_obj`` -> ``PersistentRecord``
  (the source text is hashed, never compiled or executed);
* ``torch._utils._rebuild_tensor_v2`` / ``torch._utils._rebuild_parameter`` ->
  tensors (checked arguments, no backward hooks);
* ``torch.storage._load_from_bytes`` -> a storage read with
  ``torch.load(..., weights_only=True)`` (torch's own version uses
  ``weights_only=False``);
* ``collections.OrderedDict`` (module ``_parameters``/``_buffers``/``_modules``
  and hook tables);
* ``builtins.set``: pickle protocol 3 (Python 3.7's default, used by the
  StyleGAN2-ADA release) writes sets such as ``_non_persistent_buffers_set`` as
  ``builtins.set([...])``; protocol 4+ uses the EMPTY_SET opcode instead;
* ``dnnlib.util.EasyDict`` -> a plain ``dict`` subclass of ours (NVIDIA's
  ``init_kwargs`` hold ``mapping_kwargs``/``synthesis_kwargs`` EasyDicts);
* numpy array/scalar reconstruction (``numpy[._]core.multiarray._reconstruct``,
  ``numpy[._]core.multiarray.scalar``, ``numpy.ndarray``, ``numpy.dtype``):
  StyleGAN3 layers keep numpy arrays and numpy floats as attributes and kwargs.

Each entry is wrapped in an immutable object (``numpy.ndarray`` is only a
token accepted by ``_reconstruct``; ``EasyDict`` is a class with a frozen
metaclass), so a pickle's BUILD opcode cannot patch the loader for later files.
Plain ``torch.nn`` module classes, ``copyreg._reconstructor`` and ``builtins``
callables are not on the list: NVIDIA's networks are persistent classes all the
way down, written with pickle protocol 3 or higher.

Everything else is refused with a one-line :class:`WeightsError`, before any of
it is called.  After loading, the whole object tree is checked to contain only
data (containers, numbers, strings, tensors, numpy values, records).
"""
from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pulse_sr.errors import WeightsError

__all__ = [
    "EasyDictData",
    "PersistentRecord",
    "RestrictedUnpickler",
    "load_nvidia_pickle",
    "network_kwargs",
    "network_state_dict",
]


class _Refused(Exception):
    """Raised inside the unpickler; turned into WeightsError with the file name."""


@dataclass
class PersistentRecord:
    """What one ``torch_utils.persistence`` object turns into: pure data.

    ``module_name`` is synthetic (the pickle does not record the real module
    name; NVIDIA imports the source under a generated name): it is
    ``"persistent_module_<first 16 hex digits of the source hash>"``.
    ``state`` is the pickled object's ``__dict__`` (``_parameters``,
    ``_buffers``, ``_modules``, ``_non_persistent_buffers_set``,
    ``_init_args``, ``_init_kwargs``, plain attributes ...).
    """

    module_name: str
    class_name: str
    version: int
    module_src_sha256: str
    module_src_length: int
    state: dict = field(repr=False)

    @property
    def init_kwargs(self) -> dict:
        return _plain(self.state.get("_init_kwargs", {}))

    @property
    def init_args(self) -> tuple:
        return tuple(_plain(self.state.get("_init_args", ())))


class _FrozenClass(type):
    """Metaclass whose classes cannot be modified (a pickle BUILD cannot patch them)."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise _Refused("the pickle tries to modify a loader class")

    def __delattr__(cls, name: str) -> None:
        raise _Refused("the pickle tries to modify a loader class")


class EasyDictData(dict, metaclass=_FrozenClass):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict, no behaviour of NVIDIA's."""

    def __setstate__(self, state: Any) -> None:  # BUILD with attribute state
        if isinstance(state, dict):
            self.update(state)
        elif state is not None:
            raise pickle.UnpicklingError("EasyDict with unexpected state")


# --------------------------------------------------------------- rebuilders


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if type(meta) is not dict:
        raise _Refused("a StyleGAN network record whose metadata is not a dict")
    missing = {"type", "version", "module_src", "class_name", "state"} - set(meta)
    if missing:
        raise _Refused(f"a StyleGAN network record without {', '.join(sorted(missing))}")
    if meta["type"] != "class":
        kind = repr(meta["type"])[:40] if isinstance(meta["type"], str) else type(meta["type"]).__name__
        raise _Refused(f"a StyleGAN network record of type {kind} (only 'class' is supported)")
    version, src, name, state = meta["version"], meta["module_src"], meta["class_name"], meta["state"]
    if type(version) is not int:
        raise _Refused("a StyleGAN network record whose version is not an int")
    if type(src) is not str:
        raise _Refused("a StyleGAN network record whose module_src is not text")
    if type(name) is not str or not name.isidentifier():
        raise _Refused("a StyleGAN network record whose class_name is not a name")
    if not isinstance(state, dict):
        raise _Refused(f"a StyleGAN network record ({name}) whose state is not a dict")
    digest = hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest()
    # The source text is only hashed: it is never compiled, imported or run.
    return PersistentRecord(
        module_name=f"persistent_module_{digest[:16]}",
        class_name=name,
        version=version,
        module_src_sha256=digest,
        module_src_length=len(src),
        state=dict(state),
    )


def _no_hooks(hooks: Any) -> None:
    if hooks is None:
        return
    if not isinstance(hooks, dict) or len(hooks):
        raise _Refused("a tensor with backward hooks")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _Refused("a tensor built from something that is not a storage")
    if type(storage_offset) is not int or not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise _Refused("a tensor with malformed offset/size/stride")
    if not all(type(v) is int for v in (*size, *stride)):
        raise _Refused("a tensor with malformed size/stride")
    if type(requires_grad) is not bool:
        raise _Refused("a tensor with malformed requires_grad")
    _no_hooks(backward_hooks)
    if metadata:
        raise _Refused("a tensor with extra metadata")
    tensor = torch._utils._rebuild_tensor_v2(
        storage, storage_offset, size, stride, requires_grad, collections.OrderedDict()
    )
    return tensor


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, torch.Tensor) or type(requires_grad) is not bool:
        raise _Refused("a parameter built from something that is not a tensor")
    _no_hooks(backward_hooks)
    return torch.nn.Parameter(data, requires_grad)


def _load_storage_from_bytes(data):
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused("a storage built from something that is not bytes")
    try:
        storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001  torch's weights-only unpickler refused, or bad bytes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _Refused(f"a tensor storage that torch.load(weights_only=True) refuses ({first[:200]})") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _Refused("tensor storage bytes that do not hold a storage")
    return storage


def _ordered_dict(*args):
    if len(args) > 1:
        raise _Refused("an OrderedDict with unexpected arguments")
    if args and not isinstance(args[0], (list, tuple, dict)):
        raise _Refused("an OrderedDict built from something that is not data")
    return collections.OrderedDict(*args)


def _set(items=()):
    if not isinstance(items, (list, tuple)):
        raise _Refused("a set built from something that is not a list")
    return set(items)


class _Token:
    """An immutable stand-in object (e.g. for ``numpy.ndarray`` as an argument)."""

    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        object.__setattr__(self, "label", label)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _Refused("the pickle tries to modify a loader object")

    __delattr__ = __setattr__  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{self.label}>"


class _Builder(_Token):
    """An immutable callable wrapping one of our rebuild functions.

    Wrapping keeps a pickle's BUILD opcode from patching the functions
    themselves (``__defaults__`` ...) for later loads.
    """

    __slots__ = ("fn",)

    def __init__(self, label: str, fn: Any) -> None:
        super().__init__(label)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


_NDARRAY = _Token("numpy.ndarray")


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not _NDARRAY:
        raise _Refused("a numpy array of a class other than numpy.ndarray")
    if not isinstance(shape, tuple) or not isinstance(dtype, (bytes, str)):
        raise _Refused("a numpy array with malformed arguments")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _np_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise _Refused("a numpy dtype that is not named by a string")
    return np.dtype(spec, align, copy)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype):
        raise _Refused("a numpy scalar without a numpy dtype")
    if dtype.hasobject:
        raise _Refused("a numpy object scalar")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise _Refused("a numpy scalar with malformed data")
    return np.frombuffer(bytes(data), dtype=dtype)[0].copy()


# The whole allow-list: (module, name) -> our own callable.  Nothing is imported
# by name from the file; every entry maps to code in this module (or numpy's
# ndarray/dtype types, whose construction is data-only, see _check_tree).
_ALLOWED: dict[tuple[str, str], Any] = {
    **{
        key: _Builder(".".join(key), fn)
        for key, fn in {
            ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
            ("collections", "OrderedDict"): _ordered_dict,
            ("builtins", "set"): _set,
            ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
            ("numpy.core.multiarray", "scalar"): _np_scalar,
            ("numpy._core.multiarray", "scalar"): _np_scalar,
            ("numpy", "dtype"): _np_dtype,
        }.items()
    },
    ("numpy", "ndarray"): _NDARRAY,  # only ever an argument of _reconstruct
    ("dnnlib.util", "EasyDict"): EasyDictData,  # a class: NEWOBJ needs one (frozen metaclass)
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(
                f"the pickle asks for {module}.{name}, which is not a tensor or a StyleGAN network record"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("the pickle uses persistent ids (a torch.save file, not an NVIDIA network pickle)")


# --------------------------------------------------------------- tree check

_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None), np.generic)


def _check_tree(root: Any) -> None:
    """Refuse anything in the loaded tree that is not plain data."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, _SCALARS):
            if isinstance(obj, np.generic) and obj.dtype.hasobject:
                raise _Refused("a numpy object scalar")
            continue
        if isinstance(obj, (type, _Token)) or callable(obj):
            raise _Refused(f"a loader object or callable ({obj!r}) used as a value inside the data")
        if isinstance(obj, torch.Tensor):
            if obj._backward_hooks or obj.__dict__:
                raise _Refused("a tensor with backward hooks or extra attributes")
            continue
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                stack.extend(obj.ravel().tolist())
            continue
        if isinstance(obj, PersistentRecord):
            if type(obj.state) is not dict or not all(
                isinstance(v, t) for v, t in ((obj.module_name, str), (obj.class_name, str), (obj.module_src_sha256, str))
            ) or type(obj.version) is not int or type(obj.module_src_length) is not int:
                raise _Refused("a StyleGAN network record whose fields were overwritten")
            if obj.__dict__.keys() != {"module_name", "class_name", "version", "module_src_sha256", "module_src_length", "state"}:
                raise _Refused("a StyleGAN network record with extra fields")
            stack.append(obj.state)
            continue
        if isinstance(obj, dict):  # dict, OrderedDict, EasyDictData
            if type(obj) not in (dict, collections.OrderedDict, EasyDictData):
                raise _Refused(f"an unexpected mapping type {type(obj).__name__}")
            if type(obj) is EasyDictData and obj.__dict__:
                raise _Refused("an EasyDict with attributes")
            stack.extend(obj.keys())
            stack.extend(obj.values())
            continue
        if type(obj) in (list, tuple, set, frozenset):
            stack.extend(obj)
            continue
        raise _Refused(f"an unexpected value of type {type(obj).__name__}")


# --------------------------------------------------------------- public API

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy (non-zip) torch.save file


def load_nvidia_pickle(path: str | os.PathLike) -> dict:
    """Load an NVIDIA StyleGAN2-ADA/StyleGAN3 ``.pkl`` file without running its code.

    Returns the top-level dict; networks (``'G'``, ``'D'``, ``'G_ema'``,
    ``'augment_pipe'``) are :class:`PersistentRecord` trees.
    Raises :class:`WeightsError` (one line, naming the file) if the file is
    missing, unreadable, not a pickle, truncated, or asks for anything outside
    the allow-list.
    """
    name = os.fspath(path)
    try:
        fh = open(name, "rb")  # noqa: SIM115  (open errors are reported apart from read errors)
    except FileNotFoundError:
        raise WeightsError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise WeightsError(f"{name}: is a folder, not an NVIDIA network .pkl file") from None
    except OSError as exc:
        raise WeightsError(f"{name}: cannot open ({exc.strerror or type(exc).__name__})") from None
    with fh:
        head = fh.read(4)
        if not head:
            raise WeightsError(f"{name}: file is empty, not an NVIDIA network .pkl file")
        if head == b"PK\x03\x04":
            raise WeightsError(f"{name}: is a zip archive (torch.save format), not an NVIDIA network .pkl file")
        if head[0] != 0x80:
            raise WeightsError(f"{name}: not a pickle file (NVIDIA network .pkl files start with a pickle header)")
        fh.seek(0)
        try:
            data = RestrictedUnpickler(fh).load()
            _check_tree(data)
        except _Refused as exc:
            raise WeightsError(f"{name}: refused to load: {exc}") from None
        except WeightsError:
            raise
        except EOFError:
            raise WeightsError(f"{name}: file is truncated (the pickle ends early)") from None
        except MemoryError:
            raise WeightsError(f"{name}: not enough memory to read the file") from None
        except RecursionError:
            raise WeightsError(f"{name}: refused to load: the pickle nests too deeply") from None
        except Exception as exc:  # noqa: BLE001  UnpicklingError, ValueError, ... from malformed data
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if isinstance(exc, pickle.UnpicklingError) and "truncated" in msg:
                raise WeightsError(f"{name}: file is truncated (the pickle ends early)") from None
            raise WeightsError(
                f"{name}: not a readable NVIDIA network .pkl file ({type(exc).__name__}{': ' + msg[:200] if msg else ''})"
            ) from None
    if type(data) is int and data == _TORCH_LEGACY_MAGIC:
        raise WeightsError(f"{name}: is a torch.save file (legacy format), not an NVIDIA network .pkl file")
    if not isinstance(data, dict):
        raise WeightsError(
            f"{name}: not an NVIDIA network .pkl file (expected a dict with 'G_ema', found {type(data).__name__})"
        )
    return data


#: most nodes (containers and leaves) a record's plain data may expand to when copied
MAX_PLAIN_NODES = 1_000_000
#: deepest nesting of a record's plain data
MAX_PLAIN_DEPTH = 200


class _CopyBudget:
    """Counts the nodes :func:`_plain` copies; refuses past ``max_nodes`` or ``max_depth``.

    A pickle memoizes shared objects, so a few hundred bytes can describe a structure whose
    every level references the next one twice: copying it branch by branch doubles the work
    per level. Counting as we copy bounds that work however the data is shared.
    """

    def __init__(self, max_nodes: int | None = None, max_depth: int | None = None) -> None:
        self.max_nodes = MAX_PLAIN_NODES if max_nodes is None else max_nodes
        self.max_depth = MAX_PLAIN_DEPTH if max_depth is None else max_depth
        self.nodes = 0

    def visit(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise WeightsError(f"refused: the network's arguments expand to more than {self.max_nodes:,} "
                               "values (a pickle that references its own data over and over)",
                               nodes=self.nodes, max_nodes=self.max_nodes)
        if depth > self.max_depth:
            raise WeightsError(f"refused: the network's arguments nest deeper than {self.max_depth} levels",
                               depth=depth, max_depth=self.max_depth, nodes=self.nodes)


def _plain(obj: Any, budget: _CopyBudget | None = None, depth: int = 0) -> Any:
    """EasyDictData -> dict, recursively through dicts, lists and tuples (a fresh copy of each
    container), counted against ``budget`` (default limits: :data:`MAX_PLAIN_NODES` nodes,
    :data:`MAX_PLAIN_DEPTH` levels); raises WeightsError beyond it."""
    budget = budget if budget is not None else _CopyBudget()
    budget.visit(depth)
    if isinstance(obj, dict):
        out = {k: _plain(v, budget, depth + 1) for k, v in obj.items()}
        return collections.OrderedDict(out) if type(obj) is collections.OrderedDict else out
    if type(obj) is list:
        return [_plain(v, budget, depth + 1) for v in obj]
    if type(obj) is tuple:
        return tuple(_plain(v, budget, depth + 1) for v in obj)
    return obj


def _require_record(record: Any, what: str) -> PersistentRecord:
    if not isinstance(record, PersistentRecord):
        raise WeightsError(f"{what}: expected a StyleGAN network record, found {type(record).__name__}")
    return record


def network_state_dict(record: PersistentRecord) -> dict[str, torch.Tensor]:
    """Flatten a record tree into a state dict with ``torch.nn.Module`` key naming.

    Order follows ``Module.state_dict()``: a module's parameters, then its
    persistent buffers, then its submodules (depth first).  ``None`` entries and
    buffers listed in ``_non_persistent_buffers_set`` are left out.
    """
    _require_record(record, "network_state_dict")
    out: dict[str, torch.Tensor] = {}

    def visit(rec: PersistentRecord, prefix: str, path: str) -> None:
        state = rec.state
        params = state.get("_parameters") or {}
        buffers = state.get("_buffers") or {}
        modules = state.get("_modules") or {}
        skip = state.get("_non_persistent_buffers_set") or set()
        for key, value in params.items():
            if value is not None:
                out[prefix + key] = value.detach()
        for key, value in buffers.items():
            if value is not None and key not in skip:
                out[prefix + key] = value.detach()
        for key, sub in modules.items():
            if sub is None:
                continue
            if not isinstance(sub, PersistentRecord):
                raise WeightsError(f"{path}.{key}: expected a StyleGAN network record, found {type(sub).__name__}")
            visit(sub, f"{prefix}{key}.", f"{path}.{key}")

    visit(record, "", record.class_name)
    return out


def network_kwargs(record: PersistentRecord, budget: _CopyBudget | None = None) -> dict:
    """The constructor keyword arguments (``init_kwargs``) of a top-level record, as plain dicts.

    The copy is bounded (``budget``, default :data:`MAX_PLAIN_NODES` nodes and
    :data:`MAX_PLAIN_DEPTH` levels): a one-line WeightsError refuses data that expands beyond it."""
    _require_record(record, "network_kwargs")
    if "_init_kwargs" not in record.state:
        raise WeightsError(f"{record.class_name}: the network record has no init_kwargs")
    kwargs = record.state["_init_kwargs"]
    if not isinstance(kwargs, dict):
        raise WeightsError(f"{record.class_name}: the network record's init_kwargs is not a dict")
    try:
        return dict(_plain(kwargs, budget))
    except WeightsError as exc:
        raise WeightsError(f"{record.class_name}: {exc}", **exc.data) from None
