"""NVIDIA StyleGAN2-ADA/StyleGAN3 .pkl files are read as data; nothing in them runs.

The test builds a small fake NVIDIA pickle the way the real files are laid out:
networks are nn.Modules whose pickle is a call of
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with the module
source text inside, written with plain ``pickle.dump``.  The fake
``torch_utils``/``dnnlib`` modules exist only while the file is written.
"""
from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pulse_sr.errors import WeightsError
from pulse_sr.formats.nvidia_pickle import (
    EasyDictData,
    PersistentRecord,
    load_nvidia_pickle,
    network_kwargs,
    network_state_dict,
)

# ----------------------------------------------------------- fake NVIDIA world


def _restore_modules(saved: dict) -> None:
    """Put ``sys.modules`` entries back as they were (removing ones that did not exist)."""
    for n, mod in saved.items():
        if mod is None:
            sys.modules.pop(n, None)
        else:
            sys.modules[n] = mod


@contextlib.contextmanager
def fake_nvidia_modules(marker: Path):
    """Install fake ``torch_utils.persistence`` and ``dnnlib.util`` in sys.modules, then remove them."""
    names = ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"]
    saved = {n: sys.modules.get(n) for n in names}
    torch_utils = types.ModuleType("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")
    dnnlib = types.ModuleType("dnnlib")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # would be NVIDIA's: exec(meta['module_src'])
        marker.write_text("reconstruct ran")
        raise AssertionError("fake persistence called while loading")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        def __getattr__(self, name):
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    torch_utils.persistence = persistence
    dnnlib.util = util
    sys.modules.update({"torch_utils": torch_utils, "torch_utils.persistence": persistence,
                        "dnnlib": dnnlib, "dnnlib.util": util})
    try:
        yield persistence, EasyDict
    finally:
        _restore_modules(saved)


def make_persistent_classes(reconstruct, module_src: str):
    class Persistent(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            self._init_args = args
            self._init_kwargs = kwargs

        def __reduce__(self):  # same layout as torch_utils.persistence's Decorator.__reduce__
            meta = {"type": "class", "version": 6, "module_src": module_src,
                        "class_name": type(self).__name__, "state": dict(self.__dict__)}
            return (reconstruct, (meta,))

    class FullyConnectedLayer(Persistent):
        def __init__(self, in_features, out_features, lr_multiplier=1.0):
            super().__init__(in_features, out_features, lr_multiplier=lr_multiplier)
            self.weight = torch.nn.Parameter(torch.randn(out_features, in_features))
            self.bias = torch.nn.Parameter(torch.randn(out_features))
            self.weight_gain = lr_multiplier / np.sqrt(in_features)  # numpy float64 attribute

    class MappingNetwork(Persistent):
        def __init__(self, z_dim, w_dim, num_ws, num_layers=2):
            super().__init__(z_dim=z_dim, w_dim=w_dim, num_ws=num_ws, num_layers=num_layers)
            for i in range(num_layers):
                setattr(self, f"fc{i}", FullyConnectedLayer(z_dim if i == 0 else w_dim, w_dim))
            self.register_buffer("w_avg", torch.randn(w_dim))

    class SynthesisLayer(Persistent):
        def __init__(self, w_dim, channels, size):
            super().__init__(w_dim=w_dim, channels=channels, in_size=np.int64(size), in_cutoff=np.float64(size / 2))
            self.affine = FullyConnectedLayer(w_dim, channels)
            self.weight = torch.nn.Parameter(torch.randn(channels, channels, 3, 3))
            self.bias = torch.nn.Parameter(torch.zeros(channels))
            self.in_size = np.broadcast_to(np.asarray(size), [2])  # numpy array attribute (StyleGAN3 style)
            filt = torch.randn(4, 4)
            self.register_buffer("up_filter", filt)
            self.register_buffer("up_filter_t", filt.t())  # a view sharing the storage, non-contiguous
            self.register_buffer("noise_const", torch.randn(size, size).half())
            self.register_buffer("scratch", torch.randn(3), persistent=False)
            self.register_buffer("down_filter", None)

    class SynthesisBlock(Persistent):
        def __init__(self, w_dim, channels, size):
            super().__init__(w_dim=w_dim, channels=channels, resolution=size)
            self.const = torch.nn.Parameter(torch.randn(channels, size, size))
            self.conv1 = SynthesisLayer(w_dim, channels, size)
            self.torgb = FullyConnectedLayer(w_dim, 3)
            self.register_buffer("resample_filter", torch.arange(16.0).reshape(4, 4))

    class SynthesisNetwork(Persistent):
        def __init__(self, w_dim, img_resolution, img_channels, **block_kwargs):
            super().__init__(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **block_kwargs)
            self.b4 = SynthesisBlock(w_dim, 4, 4)
            self.num_ws = 2

    class Generator(Persistent):
        def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, synthesis_kwargs):
            super().__init__(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                             img_channels=img_channels, mapping_kwargs=mapping_kwargs,
                             synthesis_kwargs=synthesis_kwargs)
            self.z_dim, self.w_dim, self.img_resolution = z_dim, w_dim, img_resolution
            self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
            self.mapping = MappingNetwork(z_dim, w_dim, self.synthesis.num_ws, **mapping_kwargs)

    class Discriminator(Persistent):
        def __init__(self, c_dim, img_resolution, img_channels):
            super().__init__(c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels)
            self.out = FullyConnectedLayer(8, 1)

    class AugmentPipe(Persistent):
        def __init__(self, xflip=0):
            super().__init__(xflip=xflip)
            self.register_buffer("p", torch.ones([]))

    return Generator, Discriminator, AugmentPipe


def write_fake_nvidia_pickle(path: Path, marker: Path, protocol: int | None = None):
    """Write a small NVIDIA-style snapshot; return (G_ema state_dict, G_ema init kwargs)."""
    module_src = (
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
        "class Generator: pass\n"
    )
    torch.manual_seed(0)
    with fake_nvidia_modules(marker) as (persistence, EasyDict):
        Generator, Discriminator, AugmentPipe = make_persistent_classes(
            persistence._reconstruct_persistent_obj, module_src)
        kwargs = {"z_dim": 8, "c_dim": 0, "w_dim": 8, "img_resolution": 4, "img_channels": 3,
                      "mapping_kwargs": EasyDict(num_layers=2),
                      "synthesis_kwargs": EasyDict(channel_base=32, channel_max=4, num_fp16_res=0, conv_clamp=None)}
        G = Generator(**kwargs)
        G_ema = Generator(**kwargs).eval().requires_grad_(False)
        D = Discriminator(c_dim=0, img_resolution=4, img_channels=3)
        data = {"G": G, "D": D, "G_ema": G_ema, "augment_pipe": AugmentPipe(xflip=1),
                    "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset",
                                             "path": "ffhq.zip", "resolution": 4, "use_labels": False}}
        with open(path, "wb") as fh:
            if protocol is None:
                pickle.dump(data, fh)
            else:
                pickle.dump(data, fh, protocol=protocol)
        expected = {k: v.detach().clone() for k, v in G_ema.state_dict().items()}
        expected_kwargs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in kwargs.items()}
    assert "torch_utils" not in sys.modules and "torch_utils.persistence" not in sys.modules
    assert "dnnlib.util" not in sys.modules
    return expected, expected_kwargs


# ----------------------------------------------------------------- good files


@pytest.mark.parametrize("protocol", [None, 3, 5])
def test_fake_nvidia_pickle_loads_as_data(tmp_path, protocol):
    marker = tmp_path / "EXECUTED"
    path = tmp_path / "network-snapshot-000000.pkl"
    expected, expected_kwargs = write_fake_nvidia_pickle(path, marker, protocol)

    data = load_nvidia_pickle(path)
    assert not marker.exists(), "code from the pickle ran"
    assert "torch_utils" not in sys.modules
    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    assert data["training_set_kwargs"]["path"] == "ffhq.zip"

    G_ema = data["G_ema"]
    assert isinstance(G_ema, PersistentRecord)
    assert G_ema.class_name == "Generator" and G_ema.version == 6
    assert len(G_ema.module_src_sha256) == 64 and G_ema.module_src_length > 0
    assert not any(isinstance(v, str) and "pathlib" in v for v in vars(G_ema).values())
    assert isinstance(G_ema.state["_modules"]["synthesis"], PersistentRecord)
    assert G_ema.state["_modules"]["mapping"].class_name == "MappingNetwork"

    got = network_state_dict(G_ema)
    assert list(got) == list(expected)  # same keys, same order, nothing extra or missing
    assert "synthesis.b4.conv1.weight" in got and "mapping.w_avg" in got
    assert "synthesis.b4.conv1.scratch" not in got  # non-persistent buffer
    for key, want in expected.items():
        have = got[key]
        assert have.dtype == want.dtype and have.shape == want.shape and have.stride() == want.stride(), key
        assert have.contiguous().numpy().tobytes() == want.contiguous().numpy().tobytes(), key
    assert not any(t.requires_grad for t in got.values())

    kwargs = network_kwargs(G_ema)
    assert kwargs == expected_kwargs
    assert type(kwargs["mapping_kwargs"]) is dict
    assert network_kwargs(data["D"]) == {"c_dim": 0, "img_resolution": 4, "img_channels": 3}
    assert network_state_dict(data["augment_pipe"])["p"].item() == 1.0

    # numpy attributes/kwargs (StyleGAN3 keeps these) come back as numpy values
    layer = G_ema.state["_modules"]["synthesis"].state["_modules"]["b4"].state["_modules"]["conv1"]
    assert np.array_equal(layer.state["in_size"], [4, 4])
    assert layer.state["_init_kwargs"]["in_cutoff"] == np.float64(2.0)
    assert isinstance(layer.state["_init_kwargs"]["in_size"], np.int64)
    assert not marker.exists()


def test_state_dict_loads_into_matching_module(tmp_path):
    marker = tmp_path / "EXECUTED"
    path = tmp_path / "snap.pkl"
    expected, _ = write_fake_nvidia_pickle(path, marker)
    got = network_state_dict(load_nvidia_pickle(path)["G_ema"])
    # a module with the same structure accepts the flattened state dict strictly
    module = torch.nn.Module()
    for key, value in expected.items():
        *parents, leaf = key.split(".")
        owner = module
        for name in parents:
            if not hasattr(owner, name):
                owner.add_module(name, torch.nn.Module())
            owner = getattr(owner, name)
        owner.register_buffer(leaf, torch.empty_like(value))
    module.load_state_dict(got, strict=True)


# ----------------------------------------------------------- malicious files


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _touch(marker: Path) -> str:
    return f"touch {marker}"


def _payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    touch = _touch(marker).encode()
    py_touch = f"open({str(marker)!r}, 'w').write('x')"
    with_meta = lambda state: pickle.dumps(
        {"G_ema": _Reduce(_fake_reconstruct(), ({"type": "class", "version": 6, "module_src": "",
                                                      "class_name": "Generator", "state": state},))}, protocol=4)
    return {
        # os.system as written by a crafted GLOBAL (pickle.dumps would say posix.system)
        "os.system": (b"\x80\x02cos\nsystem\nq\x00X" + len(touch).to_bytes(4, "little") + touch + b"\x85R.", "os.system"),
        "posix.system": (pickle.dumps(_Reduce(os.system, (_touch(marker),))), "system"),
        "builtins.eval": (pickle.dumps(_Reduce(eval, (py_touch,))), "builtins.eval"),
        "builtins.exec": (pickle.dumps({"G_ema": _Reduce(exec, (py_touch,))}), "builtins.exec"),
        "subprocess.Popen": (pickle.dumps(_Reduce(subprocess.Popen, (["touch", str(marker)],))), "subprocess.Popen"),
        "getattr GLOBAL": (
            b"\x80\x02cbuiltins\ngetattr\n(cbuiltins\nobject\nS'__subclasses__'\ntR.", "builtins.getattr"),
        "torch.load": (pickle.dumps(_Reduce(torch.load, ("x.pt",))), "torch.serialization.load"),
        "meta smuggles os.system": (with_meta({"hook": os.system, "x": _Reduce(os.system, (_touch(marker),))}), "system"),
        "meta smuggles an allowed class as a value": (with_meta({"factory": collections.OrderedDict}), "callable"),
        "meta smuggles the rebuild function": (with_meta({"f": torch._utils._rebuild_tensor_v2}), "callable"),
        "meta with non-text module_src": (pickle.dumps({"G_ema": _Reduce(_fake_reconstruct(), (
            {"type": "class", "version": 6, "module_src": collections.OrderedDict, "class_name": "G", "state": {}},))}),
            "refused to load"),
        "storage bytes smuggle os.system": (pickle.dumps({"w": _Reduce(
            torch.storage._load_from_bytes, (pickle.dumps(_Reduce(os.system, (_touch(marker),)), protocol=2),))}),
            "weights_only"),
        "numpy subclass": (pickle.dumps(_Reduce(np._core.multiarray._reconstruct,
                                                 (collections.OrderedDict, (0,), b"b"))),
                           "refused to load"),
    }


_RECONSTRUCT_HOLDER: dict = {}


def _fake_reconstruct():
    """A function that pickles as torch_utils.persistence._reconstruct_persistent_obj."""
    if "f" not in _RECONSTRUCT_HOLDER:
        def _reconstruct_persistent_obj(meta):
            raise AssertionError("never called")
        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        _RECONSTRUCT_HOLDER["f"] = _reconstruct_persistent_obj
    return _RECONSTRUCT_HOLDER["f"]


@pytest.fixture
def evil_files(tmp_path):
    marker = tmp_path / "PWNED"
    fake = types.ModuleType("torch_utils.persistence")
    fake._reconstruct_persistent_obj = _fake_reconstruct()
    saved = {n: sys.modules.get(n) for n in ("torch_utils", "torch_utils.persistence")}
    sys.modules["torch_utils"] = types.ModuleType("torch_utils")
    sys.modules["torch_utils.persistence"] = fake
    try:
        payloads = _payloads(marker)
    finally:
        _restore_modules(saved)
    files = {}
    for i, (name, (blob, expect)) in enumerate(payloads.items()):
        path = tmp_path / f"evil{i}.pkl"
        path.write_bytes(blob)
        files[name] = (path, expect)
    return marker, files


@pytest.mark.parametrize("case", [
    "os.system", "posix.system", "builtins.eval", "builtins.exec", "subprocess.Popen", "getattr GLOBAL",
    "torch.load", "meta smuggles os.system", "meta smuggles an allowed class as a value",
    "meta smuggles the rebuild function", "meta with non-text module_src", "storage bytes smuggle os.system",
    "numpy subclass",
])
def test_malicious_pickles_are_refused(evil_files, case):
    marker, files = evil_files
    path, expect = files[case]
    with pytest.raises(WeightsError) as info:
        load_nvidia_pickle(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: refused to load"), msg
    assert expect in msg, msg
    assert not marker.exists(), "a malicious pickle had an effect"


def test_payloads_are_live_with_plain_pickle(tmp_path):
    """Sanity check of the test itself: the payloads above do act when loaded with pickle.load."""
    marker = tmp_path / "LIVE"
    pickle.loads(pickle.dumps(_Reduce(os.system, (_touch(marker),))))
    assert marker.exists()
    marker.unlink()
    pickle.loads(pickle.dumps(_Reduce(eval, (f"open({str(marker)!r}, 'w').write('x')",))))
    assert marker.exists()
    marker.unlink()
    # and the module_src sentinel of the fake NVIDIA file would create its marker if executed
    path = tmp_path / "snap.pkl"
    write_fake_nvidia_pickle(path, marker)
    record = load_nvidia_pickle(path)["G_ema"]
    src = ("import pathlib\n"
           f"pathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
           "class Generator: pass\n")
    import hashlib
    assert hashlib.sha256(src.encode()).hexdigest() == record.module_src_sha256
    assert not marker.exists()
    exec(compile(src, "<sentinel>", "exec"), {})  # noqa: S102  our own sentinel text, on purpose
    assert marker.exists()


def test_refusal_message_names_the_global(evil_files):
    _, files = evil_files
    path, _ = files["os.system"]
    with pytest.raises(WeightsError, match=r"refused to load: the pickle asks for os\.system, which is not a tensor "
                                           r"or a StyleGAN network record$"):
        load_nvidia_pickle(path)


# -------------------------------------------------------------- broken files


def test_broken_files_name_the_file(tmp_path):
    marker = tmp_path / "EXECUTED"
    good = tmp_path / "good.pkl"
    write_fake_nvidia_pickle(good, marker)
    blob = good.read_bytes()
    cases = {
        "truncated.pkl": blob[: len(blob) // 2],
        "cut_at_end.pkl": blob[:-1],
        "empty.pkl": b"",
        "text.pkl": b"this is not a pickle\n",
        "zip.pkl": b"PK\x03\x04" + b"\x00" * 40,
        "list.pkl": pickle.dumps([1, 2, 3]),
        "legacy_torch_save.pkl": b"",  # filled below
    }
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf, _use_new_zipfile_serialization=False)
    cases["legacy_torch_save.pkl"] = buf.getvalue()
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(WeightsError) as info:
            load_nvidia_pickle(path)
        msg = str(info.value)
        assert msg.startswith(str(path) + ":") and "\n" not in msg, (name, msg)
        if name in ("truncated.pkl", "cut_at_end.pkl"):
            assert "truncated" in msg, msg
    with pytest.raises(WeightsError, match="file not found"):
        load_nvidia_pickle(tmp_path / "missing.pkl")
    with pytest.raises(WeightsError, match="folder"):
        load_nvidia_pickle(tmp_path)
    assert not marker.exists()


def test_helpers_reject_non_records():
    with pytest.raises(WeightsError):
        network_state_dict({"weight": torch.zeros(1)})
    with pytest.raises(WeightsError):
        network_kwargs(None)
    assert issubclass(EasyDictData, dict)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cuda_storages_load_on_cpu(tmp_path):
    """Snapshots saved from GPU memory name 'cuda:0' inside the storage bytes; they load on the CPU."""
    cpu_bytes = torch.arange(3.0).storage().__reduce__()[1][0]
    cuda_bytes = cpu_bytes.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    assert cuda_bytes != cpu_bytes
    tensor_pickle = pickle.dumps({"w": _Reduce(torch._utils._rebuild_tensor_v2, (
        _Reduce(torch.storage._load_from_bytes, (cuda_bytes,)), 0, (3,), (1,), False, collections.OrderedDict()))})
    path = tmp_path / "cuda.pkl"
    path.write_bytes(tensor_pickle)
    data = load_nvidia_pickle(path)
    assert data["w"].device.type == "cpu" and data["w"].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("global_line, key", [
    (b"cbuiltins\nset\n", "fn"),
    (b"ctorch._utils\n_rebuild_tensor_v2\n", "fn"),
    (b"cdnnlib.util\nEasyDict\n", "__setstate__"),
    (b"cnumpy\nndarray\n", "label"),
])
@pytest.mark.parametrize("slot_state", [True, False])
def test_build_cannot_patch_the_loader(tmp_path, global_line, key, slot_state):
    """A BUILD opcode aimed at an allowed global must not change the loader for later files."""
    from pulse_sr.formats import nvidia_pickle

    before = {k: (getattr(v, "fn", None), dict(vars(v)) if isinstance(v, type) else None)
              for k, v in nvidia_pickle._ALLOWED.items()}
    name = key.encode()
    state = b"}X" + len(name).to_bytes(4, "little") + name + b"N" + b"s"
    blob = b"\x80\x02" + global_line + ((b"N" + state + b"\x86") if slot_state else state) + b"b."
    path = tmp_path / "patch.pkl"
    path.write_bytes(blob)
    with pytest.raises(WeightsError, match=r"^.*patch\.pkl: "):
        load_nvidia_pickle(path)
    after = {k: (getattr(v, "fn", None), dict(vars(v)) if isinstance(v, type) else None)
             for k, v in nvidia_pickle._ALLOWED.items()}
    assert after == before
    good = tmp_path / "good.pkl"
    write_fake_nvidia_pickle(good, tmp_path / "EXECUTED")
    assert set(network_state_dict(load_nvidia_pickle(good)["G_ema"]))
