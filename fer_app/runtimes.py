"""CPU runtimes for the image encoder, a one-time export cache, an accuracy check and `auto` selection.

A runtime runs an encoder's `forward` on the CPU; everything else (preprocessing, the config saved
with a model, the head) stays the torch encoder's, so `Classifier(select_runtime(encoder), head)`
works unchanged. The runtimes (`RUNTIMES`):

- `torch`: torch eager fp32, the reference every other runtime is checked against.
- `torch-int8`: torch's dynamic int8 quantization of the Linear layers.
- `onnx-fp32`: ONNX Runtime on the encoder exported to ONNX (dynamic batch axis).
- `onnx-int8`: ONNX Runtime on that export with dynamic int8 quantization of its MatMuls (7-bit weights
  per output channel, which cannot saturate on CPUs without VNNI: `SAFE_WEIGHT_MAX`).
- `openvino-fp32`, `openvino-bf16`: OpenVINO's CPU plugin on the same ONNX export, in fp32 or in
  bfloat16 (only offered on CPUs with native bf16, e.g. AVX512_BF16 or AMX).
- `onnx-int8-static`: ONNX Runtime on a static-int8 file shipped in the model's folder
  (`fer_app.quantize` makes it for compact models); offered only when the model ships one that was
  made from its weights (`shipped`).

Export cache: ONNX files are written once per weights under `models/.onnx-cache/` (see
`default_cache_dir`), one folder per artifact named by a key: the sha256 of the encoder's weights
(its state dict) and architecture, the artifact kind, the opset and the library versions. A
`manifest.json` beside the file records the key and the file's sha256 and size; a folder whose
manifest is missing, unreadable, for another key, or whose file does not hash to it, is reported
and rebuilt, never loaded. Folders are written to a temporary name and renamed into place.

Accuracy check (`AccuracyCheck`): each runtime's embeddings are compared with torch fp32's on real
face crops: the model's shipped reference batch when it has one (`reference.safetensors`, see
`read_reference`), else `check_crops` (the astronaut of assets/ cut with several margins, shifts,
flips and brightness changes, plus FER-2013 validation faces when the dev data set is present): the
cosine similarity of the embeddings and the agreement of the head's top-1 label (the model's head,
or a random linear head over the main directions in which the crops' embeddings differ,
`random_head`, when there is none). A runtime passes with a mean cosine of at least `COSINE_MIN`
AND a top-1 agreement of at least `TOP1_MIN`. The check matters most for int8: on x86 CPUs without
VNNI, u8s8 int8 kernels multiply with VPMADDUBSW, whose 16-bit pair sums saturate, so the same int8
file can be exact on one CPU and wrong on another; only a check on the machine that runs it tells.

`auto` (`select_runtime`): the same for every encoder: each candidate runtime of the encoder
(`CANDIDATES`: all of them for CLIP; torch and a shipped int8 file for the compact CNN, whose ONNX
export costs more than a first load may take) that is available here is built, checked and timed
(median ms per face at batch 1 and 8, averaged); the fastest that passes wins, and a runtime later
in the list (less exact) must be at least `AUTO_MIN_GAIN` faster than the best before it to be
taken. The decision is stored in the cache folder, keyed by the weights, the head, the crops, the
shipped files' hashes, the thread count, the CPU (model and ISA flags) and the library versions,
so later loads go straight to the chosen runtime; the chosen encoder carries a `RuntimeChoice`
(`runtime_choice`) saying what was chosen and why. Runtimes that cannot be built are skipped with
one log line, so `auto` falls back to torch. Setting FER_APP_RUNTIME to a runtime's name pins what
`auto` means on a machine (e.g. "torch" in tests).

Threads: `default_threads` uses the physical cores, less one when there are four or more so that
the video thread keeps a core; `FER_APP_THREADS` or an explicit `threads` overrides it. Loading an
encoder in any runtime sets torch's thread count to it; a model then sets torch's count for the thread
it predicts in (`torch_threads`, `use_torch_threads`): its threads when torch runs the encoder, one when
torch runs only the small ops around an ONNX Runtime or OpenVINO encoder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fer_app import config
from fer_app.config import NUM_CLASSES
from fer_app.encoders.base import Encoder

TORCH, TORCH_INT8 = "torch", "torch-int8"
ONNX_FP32, ONNX_INT8 = "onnx-fp32", "onnx-int8"
OPENVINO_FP32, OPENVINO_BF16 = "openvino-fp32", "openvino-bf16"
#: A static-int8 ONNX file shipped in the model's folder (`fer_app.quantize`).
ONNX_INT8_STATIC = "onnx-int8-static"
AUTO = "auto"
#: The runtimes this module builds for any encoder, the reference first.
RUNTIMES: tuple[str, ...] = (TORCH, TORCH_INT8, ONNX_FP32, ONNX_INT8, OPENVINO_FP32, OPENVINO_BF16)
#: Runtimes that run a file the model ships (not one this module exports).
SHIPPED_RUNTIMES: tuple[str, ...] = (ONNX_INT8_STATIC,)
#: Every runtime name a user may ask for.
KNOWN_RUNTIMES: tuple[str, ...] = RUNTIMES + SHIPPED_RUNTIMES
#: What `auto` considers per encoder, in order of preference at equal speed (the most exact first).
#: The compact CNN: torch and its shipped int8 file. Its ONNX fp32 export takes 5-45 s on 2 cores (over
#: the first load's budget) and ran slower than torch on it (1.5 vs 1.0 ms per view on AVX-512).
CANDIDATES: dict[str, tuple[str, ...]] = {
    "compact": (TORCH, ONNX_INT8_STATIC),
    "clip-vit-b32": (TORCH, ONNX_FP32, OPENVINO_FP32, OPENVINO_BF16, TORCH_INT8, ONNX_INT8),
    # An ensemble of compact nets (the accurate model for photos): torch, as its members run in it.
    "ensemble": (TORCH,),
}
#: A less exact runtime must be at least this much faster (share of ms per face) than the best more
#: exact one that passed, or `auto` keeps the more exact one: within timing noise int8 is not worth it.
AUTO_MIN_GAIN = 0.05

#: A runtime passes the accuracy check with at least this mean cosine to torch fp32's embeddings...
COSINE_MIN = 0.99
#: ...and at least this agreement of the head's top-1 label.
TOP1_MIN = 0.98
#: Principal directions of the reference embeddings that the random check head reads (`random_head`).
HEAD_DIRECTIONS = 8
#: Batches `auto` times a runtime at (the mean of the ms per face at each is its score).
AUTO_TIMING_BATCHES = (1, 8)
#: Seconds of timed calls `auto` spends at most per runtime and batch size.
AUTO_TIMING_BUDGET_S = 0.2

ENV_THREADS = "FER_APP_THREADS"
#: Pins what `auto` resolves to on this machine (e.g. "torch" or "onnx-int8"), skipping the selection.
ENV_RUNTIME = "FER_APP_RUNTIME"
#: Exporters tried in order, with their opsets: the first whose export reproduces torch is kept.
EXPORTERS: tuple[tuple[str, int], ...] = (("dynamo", 18), ("torchscript", 17))
#: Bump when the layout of the cache or the way artifacts are made changes (3: `onnx-int8` with 7-bit weights).
CACHE_FORMAT = "fer-app-onnx-cache/3"
#: Largest |int8 weight| that cannot saturate the int16 pair sums of x86's u8s8 kernels without VNNI (VPMADDUBSW:
#: 2 x 255 x 64 = 32640 < 32767). Every int8 file the app makes keeps within it (ONNX Runtime's `reduce_range`):
#: with 8-bit weights the same file is exact on a VNNI CPU and wrong on an AVX2-only one.
SAFE_WEIGHT_MAX = 64
#: How `onnx-int8` is made (part of its cache key through CACHE_FORMAT; described in its manifest).
QUANTIZATION = ("dynamic: weights of the MatMuls with a constant weight int8 per output channel with reduce_range "
                f"(7-bit, |w| <= {SAFE_WEIGHT_MAX}: no saturation on CPUs without VNNI), activations uint8 at run time")
MANIFEST, MODEL_FILE = "manifest.json", "model.onnx"
INPUT_NAME, OUTPUT_NAME = "pixels", "embeddings"

ASSETS_DIR = config.PROJECT_ROOT / "assets"
#: The project's dev copy of FER-2013 (train/val arrays), used for check crops when present.
FER_DEV_DATA = config.PROJECT_ROOT.parent / "shared" / "data" / "fer2013-trainval.npz"

Progress = Callable[[str], None]


class RuntimeUnavailable(RuntimeError):
    """A runtime that cannot be used here: its package is missing, or exporting or loading failed."""


def log(message: str) -> None:
    """The default progress report: one line on stderr."""
    print(f"fer_app: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- threads

def physical_cores() -> int:
    """Physical CPU cores (psutil), or logical ones when psutil is not installed."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except ImportError:
        cores = None
    return max(1, cores or os.cpu_count() or 1)


def default_threads() -> int:
    """Inference threads: $FER_APP_THREADS, else the physical cores, less one from four cores up
    (that core stays free for the video thread; below four, one core less would cost too much speed)."""
    env = os.environ.get(ENV_THREADS, "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"{ENV_THREADS}={env!r} is not a whole number") from None
        if value < 1:
            raise ValueError(f"{ENV_THREADS}={env!r} must be at least 1")
        return value
    cores = physical_cores()
    return cores - 1 if cores >= 4 else cores


def resolve_threads(threads: int | None) -> int:
    if threads is None or threads == 0:
        return default_threads()
    if threads < 0:
        raise ValueError(f"threads must be positive, got {threads}")
    return int(threads)


#: torch's threads around an encoder that runs outside torch (ONNX Runtime, OpenVINO). torch then runs only the
#: preprocessing, the TTA views' resampling, the head and the softmax: ops too small to share out, so a second
#: OpenMP thread only spins waiting for work. On 2 AVX2 cores, the video engine with 3 faces a frame took 25-34% less
#: CPU a frame and ran 12-27% faster with one, over three runs (`scripts/thread_cost.py`; README, "The slow kind").
AROUND_ENCODER_THREADS = 1


def torch_threads(encoder: Encoder, threads: int | None) -> int | None:
    """torch's intra-op threads for a model whose encoder is `encoder`, loaded for `threads` inference threads:
    those threads when torch runs the encoder, else `AROUND_ENCODER_THREADS`; None (leave torch's count as it
    is) for a torch encoder given no count."""
    if runtime_name(encoder) not in (TORCH, TORCH_INT8):
        return AROUND_ENCODER_THREADS
    return None if threads is None else resolve_threads(threads)


#: torch's thread count when fer_app was imported, before any model set one: its own default (the physical cores, or
#: OMP_NUM_THREADS, as torchrun sets it). `use_torch_threads` also changes the count a new thread starts with, so work
#: that asks for torch's default (training, calibration: threads 0) sets this one.
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def use_torch_threads(count: int) -> None:
    """Give the calling thread `count` torch intra-op threads, if it has another count.

    OpenMP keeps the count per thread (torch.set_num_threads sets the calling thread's, and the start value of
    threads that have not run torch yet), so each model sets its own before it runs: the live page's model, in
    its video thread, and the Photo page's ensemble, in the script thread, each get theirs."""
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


# -------------------------------------------------------------------------------- availability

def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _openvino_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def require_known(names: Sequence[str]) -> None:
    """Raise ValueError for a name that is not a runtime."""
    unknown = [n for n in names if n not in KNOWN_RUNTIMES]
    if unknown:
        raise ValueError(f"unknown runtime {unknown[0]!r} (choose from {', '.join((AUTO, *KNOWN_RUNTIMES))})")


def unavailable_reason(runtime: str) -> str | None:
    """Why `runtime` cannot run here (a package is missing, the CPU lacks bf16), or None when it can."""
    require_known([runtime])
    if runtime in (ONNX_FP32, ONNX_INT8, ONNX_INT8_STATIC) and not _importable("onnxruntime"):
        return "onnxruntime is not installed"
    if runtime in (OPENVINO_FP32, OPENVINO_BF16) and not _importable("openvino"):
        return "openvino is not installed"
    if runtime == OPENVINO_BF16 and not _openvino_has_bf16():
        return "this CPU has no native bfloat16"
    return None


def available_runtimes(candidates: Sequence[str] = RUNTIMES) -> tuple[str, ...]:
    """The runtimes of `candidates` that can run on this machine."""
    return tuple(r for r in candidates if unavailable_reason(r) is None)


def runtime_name(encoder: Encoder) -> str:
    """The runtime an encoder runs in ("torch" for a plain torch encoder)."""
    return getattr(encoder, "runtime", TORCH)


# ------------------------------------------------------------------------------------ encoders

def _preprocessing_of(base: Encoder) -> Callable[[Sequence[np.ndarray]], torch.Tensor]:
    """`base.preprocess` without holding on to its weights where possible (CLIP's is a callable
    `preprocessing` object; other encoders keep their bound method)."""
    preprocessing = getattr(base, "preprocessing", None)
    return preprocessing if callable(preprocessing) else base.preprocess


class RuntimeEncoder(Encoder):
    """An encoder whose forward runs outside torch; `preprocess` and `config()` are the torch encoder's.

    `config()` is unchanged, so a model saved with it is the same as one saved with the torch
    encoder; the runtime is an attribute (`runtime`), a choice of this machine, not of the model.
    The state dict holds one buffer, `identity`: the sha256 of the torch weights and the runtime, so
    that fingerprints of the module (embedding caches) tell runtimes and weights apart.
    """

    def __init__(self, base: Encoder, runtime: str, threads: int, weights_sha256: str) -> None:
        super().__init__()
        self.encoder_id, self.embed_dim = base.encoder_id, base.embed_dim
        self.runtime, self.threads = runtime, threads
        self._preprocess = _preprocessing_of(base)
        self._config = base.config()
        identity = hashlib.sha256(f"{weights_sha256}|{runtime}".encode()).digest()
        self.register_buffer("identity", torch.tensor(list(identity), dtype=torch.uint8))

    def preprocess(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        return self._preprocess(crops)

    def config(self) -> dict:
        return dict(self._config)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(np.array(self._run(array), dtype=np.float32, copy=True))

    @abstractmethod
    def _run(self, pixels: np.ndarray) -> np.ndarray:
        """Embeddings (N, D) for float32 pixels (N, C, H, W)."""

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}, threads={self.threads}"


class OnnxEncoder(RuntimeEncoder):
    """The encoder run by an ONNX Runtime InferenceSession (CPU provider, thread-safe)."""

    def __init__(self, base: Encoder, runtime: str, model_path: Path, threads: int, weights_sha256: str) -> None:
        import onnxruntime as ort

        super().__init__(base, runtime, threads, weights_sha256)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads sleep instead of spinning: the video thread needs the cores between calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: pixels})[0]


class OpenVinoEncoder(RuntimeEncoder):
    """The encoder compiled by OpenVINO for the CPU, from the ONNX export, in fp32 or bf16."""

    def __init__(self, base: Encoder, runtime: str, model_path: Path, threads: int, weights_sha256: str,
                 precision: str) -> None:
        import openvino as ov

        super().__init__(base, runtime, threads, weights_sha256)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision})
        self._request = self.compiled.create_infer_request()
        self._output = self.compiled.output(0)
        self._lock = threading.Lock()  # an infer request serves one call at a time

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.array(self._request.infer({0: pixels})[self._output], copy=True)


def _torch_int8(base: Encoder) -> Encoder:
    """A copy of `base` with its Linear layers dynamically quantized to int8 (torch's fbgemm kernels)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice (moving to torchao)
        quantized = quantize_dynamic(base, {nn.Linear}, dtype=torch.qint8)
    quantized.runtime = TORCH_INT8
    return quantized.eval()


# ------------------------------------------------------------------------------------- hashing

def tensors_digest(module: nn.Module) -> str:
    """sha256 of a module's state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def arrays_digest(arrays: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _architecture(encoder: Encoder) -> dict:
    """What, besides the weights, shapes the exported graph: the class and any transformers config."""
    arch: dict[str, object] = {"class": f"{type(encoder).__module__}.{type(encoder).__qualname__}"}
    for name, module in encoder.named_modules():
        cfg = getattr(module, "config", None)
        if hasattr(cfg, "to_dict"):
            arch[name or "."] = {k: v for k, v in cfg.to_dict().items()
                                 if not k.startswith("_") and k != "transformers_version"}
    return arch


def versions(*modules: str) -> dict[str, str]:
    out = {}
    for name in modules:
        try:
            out[name] = str(__import__(name).__version__)
        except ImportError:
            out[name] = "missing"
    return out


def cpu_info() -> dict[str, object]:
    """The machine, as far as speed goes: CPU model, ISA flags that matter, cores."""
    model, flags = platform.processor(), ""
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), model)
        flags = next((ln.split(":", 1)[1] for ln in info.splitlines() if ln.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {"model": model, "machine": platform.machine(), "flags": [f for f in wanted if f in flags.split()],
            "cores": physical_cores(), "logical": os.cpu_count()}


def cpu_text(cpu: Mapping[str, Any]) -> str:
    """One line for a `cpu_info()` record, as the bench report and model cards print it; tolerates partial records."""
    flags = ", ".join(cpu.get("flags", [])) or "none of AVX2, AVX-512, AMX"
    return f"{cpu.get('model', '?')}, {cpu.get('cores', '?')} physical cores ({flags})"


# --------------------------------------------------------------------------------------- cache

def default_cache_dir() -> Path:
    """models/.onnx-cache (follows FER_APP_MODELS)."""
    return config.MODELS_DIR / ".onnx-cache"


@dataclass(frozen=True)
class Artifact:
    """One exported model file in the cache and its manifest."""

    path: Path
    manifest: dict


class ExportCache:
    """The artifacts of one encoder (identified by its weights) under a cache folder."""

    def __init__(self, encoder: Encoder, cache_dir: Path | None = None, progress: Progress | None = log) -> None:
        self.encoder = encoder
        self.root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.progress = progress or (lambda message: None)
        self.weights_sha256 = tensors_digest(encoder)
        self._architecture = _architecture(encoder)

    def key(self, kind: str) -> str:
        return _json_digest({"format": CACHE_FORMAT, "weights": self.weights_sha256, "kind": kind,
                             "architecture": self._architecture, "exporters": EXPORTERS,
                             "versions": versions("torch", "transformers", "onnx", "onnxruntime")})

    def folder(self, kind: str) -> Path:
        return self.root / f"{self.encoder.encoder_id or 'encoder'}-{kind}-{self.key(kind)[:20]}"

    def get(self, kind: str) -> Artifact:
        """The artifact `kind` ("onnx-fp32" or "onnx-int8"), built now when missing, stale or corrupt."""
        folder, key = self.folder(kind), self.key(kind)
        problem = validate_artifact(folder, key)
        if problem is None:
            return Artifact(folder / MODEL_FILE, json.loads((folder / MANIFEST).read_text()))
        if folder.exists():
            self.progress(f"the cached {kind} export in {folder} is unusable ({problem}); rebuilding it")
        return self._build(kind, folder, key)

    def invalidate(self, kind: str, reason: str) -> None:
        """Drop an artifact that failed to load, so that the next `get` rebuilds it."""
        folder = self.folder(kind)
        self.progress(f"discarding the cached {kind} export in {folder}: {reason}")
        shutil.rmtree(folder, ignore_errors=True)

    def _build(self, kind: str, folder: Path, key: str) -> Artifact:
        """Make the artifact in a temporary folder of the cache and rename it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=self.root))
        try:
            manifest = self._write(kind, tmp, key)
            shutil.rmtree(folder, ignore_errors=True)
            try:
                os.replace(tmp, folder)
            except OSError:
                if validate_artifact(folder, key) is not None:  # unless another process just put a good one there
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._prune(kind, keep=folder)
        self.progress(f"{kind} export ready ({manifest['size'] / 2**20:.0f} MB in {manifest['seconds']:.0f} s): "
                      f"{folder}")
        return Artifact(folder / MODEL_FILE, json.loads((folder / MANIFEST).read_text()))

    def _prune(self, kind: str, keep: Path) -> None:
        """Remove the stale artifacts of `kind` for these weights (older versions or cache format) and
        unreadable ones; those of other weights stay (another model may use them)."""
        for folder in self.root.glob(f"{self.encoder.encoder_id or 'encoder'}-{kind}-*"):
            if folder == keep:
                continue
            try:
                weights = json.loads((folder / MANIFEST).read_text()).get("weights_sha256")
            except (OSError, ValueError, AttributeError):
                weights = None
            if weights in (None, self.weights_sha256):
                shutil.rmtree(folder, ignore_errors=True)

    def _write(self, kind: str, folder: Path, key: str) -> dict:
        """Write the model file of `kind` and its manifest into `folder`; returns the manifest."""
        start = time.perf_counter()
        path = folder / MODEL_FILE
        if kind == ONNX_FP32:
            self.progress(f"exporting the {self.encoder.encoder_id} encoder to ONNX, once for these weights "
                          f"(cached in {self.root}); this can take a minute...")
            details = export_onnx(self.encoder, path)
        elif kind == ONNX_INT8:
            source = self.get(ONNX_FP32)
            self.progress("quantizing the ONNX export to int8 (dynamic), once for these weights...")
            quantize_onnx_dynamic(source.path, path)
            details = {"from_sha256": source.manifest["file_sha256"], "quantization": QUANTIZATION}
        else:
            raise ValueError(f"unknown artifact kind {kind!r}")
        manifest = {"format": CACHE_FORMAT, "key": key, "kind": kind, "file": MODEL_FILE,
                    "file_sha256": file_digest(path), "size": path.stat().st_size,
                    "weights_sha256": self.weights_sha256, "encoder": self.encoder.encoder_id,
                    "versions": versions("torch", "transformers", "onnx", "onnxruntime"),
                    "seconds": round(time.perf_counter() - start, 1),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **details}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


def validate_artifact(folder: Path, key: str) -> str | None:
    """What is wrong with a cached artifact folder for `key`, or None when it can be trusted."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest ({type(exc).__name__})"
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return "made for other weights or versions"
    path = folder / str(manifest.get("file", MODEL_FILE))
    if not path.is_file():
        return f"{path.name} is missing"
    if path.stat().st_size != manifest.get("size"):
        return f"{path.name} has {path.stat().st_size} bytes, the manifest says {manifest.get('size')}"
    if file_digest(path) != manifest.get("file_sha256"):
        return f"{path.name} does not match its sha256 (corrupt)"
    return None


# -------------------------------------------------------------------------------------- export

@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Capture the exporters' and quantizer's chatter (stdout, warnings, logging) so that stdout stays clean."""
    captured = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        logging.disable(previous)


def _example_pixels(encoder: Encoder, batch: int) -> torch.Tensor:
    """`batch` preprocessed grey-gradient crops: the shape `forward` expects."""
    crop = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    return encoder.preprocess([np.roll(crop, 7 * i, axis=1) for i in range(batch)])


def export_onnx(encoder: Encoder, path: Path) -> dict:
    """Export `encoder.forward` to `path` with a dynamic batch axis; returns the exporter and opset used.

    Tries each of `EXPORTERS` in turn and keeps the first whose file ONNX Runtime loads and that
    reproduces torch at batch 1 and 3 (the batch axis really is dynamic).
    """
    encoder = encoder.eval()
    example = _example_pixels(encoder, 2)
    problems = []
    for exporter, opset in EXPORTERS:
        try:
            with _quiet(), torch.inference_mode(False), torch.no_grad():
                if exporter == "dynamo":
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    torch.onnx.export(encoder, (example,), str(path), dynamo=True, opset_version=opset,
                                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      dynamic_shapes=({0: batch},), external_data=False)
                else:
                    torch.onnx.export(encoder, (example,), str(path), dynamo=False, opset_version=opset,
                                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            _verify_export(encoder, path)
            return {"exporter": exporter, "opset": opset}
        except Exception as exc:  # noqa: BLE001 - each exporter fails in its own ways; try the next
            problems.append(f"{exporter} (opset {opset}): {type(exc).__name__}: {str(exc).strip()[:200]}")
            path.unlink(missing_ok=True)
    raise RuntimeUnavailable("ONNX export failed: " + "; ".join(problems))


def _verify_export(encoder: Encoder, path: Path) -> None:
    """Raise unless ONNX Runtime runs `path` like torch at batch 1 and 3 (skipped without onnxruntime)."""
    if not _importable("onnxruntime"):
        import onnx

        onnx.checker.check_model(str(path))
        return
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        pixels = _example_pixels(encoder, batch)
        with torch.inference_mode():
            expected = encoder(pixels).numpy()
        got = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})[0]
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-4):
            raise ValueError(f"the export differs from torch at batch {batch}")


def quantize_onnx_dynamic(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the MatMuls (`QUANTIZATION`: weights int8 ahead of time, per output channel and
    within +-SAFE_WEIGHT_MAX; activations at run time). Raises RuntimeUnavailable when it fails, or when the weights
    come out beyond that range."""
    if not _importable("onnxruntime"):
        raise RuntimeUnavailable("onnxruntime is not installed")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _quiet():
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             per_channel=True, reduce_range=True, extra_options={"MatMulConstBOnly": True})
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; the runtime is then unavailable
        raise RuntimeUnavailable(f"int8 quantization failed: {type(exc).__name__}: {str(exc).strip()[:200]}") from exc
    problem = saturation_risk(*weight_range(target))
    if problem is not None:
        target.unlink(missing_ok=True)
        raise RuntimeUnavailable(problem)


def saturation_risk(low: int, high: int) -> str | None:
    """Why int8 weights spanning [low, high] could saturate on CPUs without VNNI, or None within +-SAFE_WEIGHT_MAX."""
    if max(-low, high) <= SAFE_WEIGHT_MAX:
        return None
    return f"int8 weights span [{low}, {high}]: beyond +-{SAFE_WEIGHT_MAX} they can saturate on CPUs without VNNI"


def weight_range(path: Path) -> tuple[int, int]:
    """The smallest and largest int8 value stored in an ONNX file's initializers: its int8 weights (static QDQ or
    dynamic) and their zero points; (0, 0) for a file without any."""
    import onnx
    from onnx import numpy_helper

    values = [v for v in (numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer)
              if v.dtype == np.int8 and v.size]
    if not values:
        return (0, 0)
    return (int(min(v.min() for v in values)), int(max(v.max() for v in values)))


# ------------------------------------------------------------------------------------ building

def load_runtime(encoder: Encoder, runtime: str, *, threads: int | None = None, cache_dir: Path | None = None,
                 progress: Progress | None = log, cache: ExportCache | None = None,
                 shipped: Mapping[str, Path] | None = None) -> Encoder:
    """`encoder` in `runtime` (no accuracy check). Raises RuntimeUnavailable when it cannot run here.

    shipped: the files a model ships for the `SHIPPED_RUNTIMES` ({"onnx-int8-static": path}); those
    runtimes are unavailable without one."""
    reason = unavailable_reason(runtime)
    if reason is None and runtime in SHIPPED_RUNTIMES and runtime not in (shipped or {}):
        reason = "the model ships no file for it"
    if reason is not None:
        raise RuntimeUnavailable(f"{runtime}: {reason}")
    threads = resolve_threads(threads)
    encoder = encoder.eval()
    # Every runtime, so that a first load (whose check builds and times the torch candidate) and later loads (a stored
    # verdict) leave the same count. A model then sets its own count in each thread it runs in (`use_torch_threads`).
    torch.set_num_threads(threads)
    if runtime in (TORCH, TORCH_INT8):
        return encoder if runtime == TORCH else _torch_int8(encoder)
    if runtime in SHIPPED_RUNTIMES:
        path = Path(shipped[runtime])  # type: ignore[index]
        try:
            return _session_encoder(encoder, runtime, path, threads, file_digest(path))
        except Exception as exc:  # noqa: BLE001 - a damaged file: say which
            raise RuntimeUnavailable(f"{runtime}: cannot load {path} ({type(exc).__name__}: "
                                     f"{str(exc).strip()[:160]})") from exc
    cache = cache or ExportCache(encoder, cache_dir, progress)
    kind = artifact_kind(runtime)
    for attempt in (1, 2):
        artifact = cache.get(kind)
        try:
            return _session_encoder(encoder, runtime, artifact.path, threads, cache.weights_sha256)
        except Exception as exc:  # noqa: BLE001 - a file that hashes right but does not load: rebuild once
            if attempt == 2:
                raise RuntimeUnavailable(f"{runtime}: cannot load {artifact.path} "
                                         f"({type(exc).__name__}: {str(exc).strip()[:200]})") from exc
            cache.invalidate(kind, f"{type(exc).__name__}: {str(exc).strip()[:120]}")
    raise AssertionError("unreachable")


def artifact_kind(runtime: str) -> str | None:
    """The cached file a runtime loads: "onnx-int8" for onnx-int8, "onnx-fp32" for the ONNX Runtime fp32
    and OpenVINO runtimes (OpenVINO compiles the ONNX export), None for the torch runtimes and the
    shipped ones (their file is the model's)."""
    if runtime in (TORCH, TORCH_INT8) or runtime in SHIPPED_RUNTIMES:
        return None
    return ONNX_INT8 if runtime == ONNX_INT8 else ONNX_FP32


def _session_encoder(base: Encoder, runtime: str, path: Path, threads: int, weights_sha256: str) -> RuntimeEncoder:
    if runtime in (ONNX_FP32, ONNX_INT8, ONNX_INT8_STATIC):
        return OnnxEncoder(base, runtime, path, threads, weights_sha256)
    precision = "bf16" if runtime == OPENVINO_BF16 else "f32"
    return OpenVinoEncoder(base, runtime, path, threads, weights_sha256, precision)


# ------------------------------------------------------------------------------- accuracy check

@dataclass(frozen=True)
class CheckCrops:
    """Face crops (grey or BGR uint8) for the accuracy check, and where they come from."""

    crops: list[np.ndarray]
    source: str

    def digest(self) -> str:
        return arrays_digest(self.crops)


def astronaut_crops(image_path: Path | None = None) -> list[np.ndarray]:
    """The face of assets/astronaut.png cut 60 ways: 2 margins x 5 shifts x mirror x 3 brightness levels."""
    from fer_app.detection import FaceDetector
    from fer_app.imageio import load_image

    image = load_image(image_path or ASSETS_DIR / "astronaut.png")
    faces = FaceDetector().detect(image)
    if faces:
        x, y, w, h = faces[0].box
    else:  # the bundled picture always has its face found; a fallback for other pictures
        side = min(image.shape[:2]) // 2
        x, y, w, h = (image.shape[1] - side) // 2, (image.shape[0] - side) // 2, side, side
    crops = []
    for margin in (0.0, 0.25):
        for dx, dy in ((0, 0), (0.08, 0), (-0.08, 0), (0, 0.08), (0, -0.08)):
            side = w * (1 + 2 * margin)
            cx, cy = x + w / 2 + dx * w, y + h / 2 + dy * h
            x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
            crop = image[y0:round(y0 + side), x0:round(x0 + side)]
            for mirrored in (crop, crop[:, ::-1]):
                for gain in (0.75, 1.0, 1.3):
                    crops.append(np.clip(mirrored.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    return crops


def fer_crops(path: Path | None = None, count: int = 240) -> list[np.ndarray]:
    """`count` FER-2013 validation faces (48x48 grey), evenly spread over the split; [] without the file."""
    path = Path(path) if path is not None else FER_DEV_DATA
    if count <= 0 or not path.is_file():
        return []
    with np.load(path) as data:
        if "val_x" not in data.files:
            return []
        faces = data["val_x"]
    picks = np.linspace(0, len(faces) - 1, min(count, len(faces))).astype(int)
    return [np.ascontiguousarray(faces[i]) for i in picks]


def check_crops(fer_count: int = 240, fer_path: Path | None = None) -> CheckCrops:
    """Real face crops: the astronaut's variants, plus FER-2013 val faces when the dev data is present."""
    astronaut = astronaut_crops()
    fer = fer_crops(fer_path, fer_count)
    source = f"{len(astronaut)} crops of assets/astronaut.png (margins, shifts, mirror, brightness)"
    if fer:
        source += f" + {len(fer)} FER-2013 val faces"
    return CheckCrops(astronaut + fer, source)


#: The reference batch a model may ship (`write_reference`): crops and torch fp32's embeddings of them.
REFERENCE_FILE = "reference.safetensors"
#: Side of the (grey) crops stored in a reference batch for encoders whose config names no input size.
REFERENCE_SIDE = 96
REFERENCE_SOURCE = "100 crops of assets/astronaut.png (margins, shifts, +-10 degree turns, mirror, brightness)"


@dataclass(frozen=True)
class Reference:
    """A model's shipped reference batch: crops, the torch fp32 embeddings they gave when it was made,
    and the digest of the encoder weights (`tensors_digest`) they were made with."""

    crops: CheckCrops
    embeddings: torch.Tensor
    weights_sha256: str
    path: Path

    def stale_reason(self, encoder: Encoder, embeddings: torch.Tensor | None = None) -> str | None:
        """Why this batch does not belong to `encoder`'s weights (None: it does). `embeddings`: torch
        fp32's embeddings of the crops computed here, compared with the stored ones when given."""
        if self.weights_sha256 != tensors_digest(encoder):
            return f"{self.path}: made for other weights (write it again: python -m fer_app quantize)"
        if embeddings is not None:
            cosine = torch.nn.functional.cosine_similarity(embeddings, self.embeddings, dim=1)
            if embeddings.shape != self.embeddings.shape or float(cosine.min()) < 0.9999:
                return (f"{self.path}: torch fp32 here differs from the stored embeddings "
                        f"(min cosine {float(cosine.min()):.5f})")
        return None


def reference_crops(image_path: Path | None = None) -> list[np.ndarray]:
    """The crops of a shipped reference batch: `astronaut_crops` plus the face rotated by +-10 degrees
    (2 margins x 5 shifts x 2 angles x mirror), 100 real face crops the project may ship."""
    import cv2

    crops = astronaut_crops(image_path)
    for crop in crops[1::6]:  # each margin and shift at gain 1.0, unmirrored
        h, w = crop.shape[:2]
        for angle in (-10, 10):
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            turned = cv2.warpAffine(crop, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
            crops += [turned, np.ascontiguousarray(turned[:, ::-1])]
    return crops


def write_reference(target: Path, encoder: Encoder, crops: Sequence[np.ndarray] | None = None) -> Reference:
    """Write a reference batch to `target` (a model folder's `REFERENCE_FILE`): grey crops at the
    encoder's input size (default `reference_crops`) and torch fp32's embeddings of them, with the
    weights' digest; atomically."""
    import cv2

    from fer_app.files import save_tensors_atomically
    from fer_app.imageio import to_grey

    side = int(encoder.config().get("input_size", REFERENCE_SIDE))
    grey = np.stack([cv2.resize(to_grey(c), (side, side), interpolation=cv2.INTER_AREA)
                     for c in (crops if crops is not None else reference_crops())])
    embeddings = embed(encoder.eval(), list(grey))
    target = Path(target)
    digest = tensors_digest(encoder)
    save_tensors_atomically(target, {"crops": torch.from_numpy(grey), "embeddings": embeddings.contiguous()},
                            metadata={"weights_sha256": digest, "source": REFERENCE_SOURCE},
                            mode=target.parent.stat().st_mode & 0o666)  # the folder's, as its other files
    source = f"{len(grey)} reference crops ({REFERENCE_SOURCE})"
    return Reference(CheckCrops([np.ascontiguousarray(c) for c in grey], source), embeddings, digest, target)


def read_reference(folder: Path) -> Reference | None:
    """The reference batch shipped in a model folder, None when there is none; a damaged file is a
    RuntimeUnavailable naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            crops, embeddings = f.get_tensor("crops"), f.get_tensor("embeddings")
    except (SafetensorError, OSError, ValueError) as exc:
        raise RuntimeUnavailable(f"{path}: not a valid reference batch ({exc})") from None
    if crops.dtype != torch.uint8 or crops.ndim != 3 or len(crops) != len(embeddings) or "weights_sha256" not in meta:
        raise RuntimeUnavailable(f"{path}: not a valid reference batch (crops {tuple(crops.shape)} {crops.dtype}, "
                                 f"embeddings {tuple(embeddings.shape)})")
    arrays = [np.ascontiguousarray(c) for c in crops.numpy()]
    source = f"{len(arrays)} reference crops shipped in {path.parent.name}/{REFERENCE_FILE} ({meta.get('source', '?')})"
    return Reference(CheckCrops(arrays, source), embeddings.float(), meta["weights_sha256"], path)


def random_head(embeddings: torch.Tensor, num_classes: int = NUM_CLASSES, seed: int = 0,
                directions: int = HEAD_DIRECTIONS) -> nn.Linear:
    """A fixed random linear head (seeded) for encoders without a head of their own.

    It reads the `directions` principal directions of `embeddings` (the reference's, centred): its
    weights are random combinations of them, and its bias centres the embeddings. A trained head
    likewise looks where the faces differ; a head over all 512 dimensions would weigh the directions
    in which face crops hardly vary as much as those in which they do, and an uncentred one gives
    every crop the same label, so that top-1 agreement says nothing.
    """
    mean = embeddings.mean(dim=0)
    basis = torch.linalg.svd(embeddings - mean, full_matrices=False).Vh[:directions]
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, basis.shape[0], generator=generator) @ basis
    head = nn.Linear(embeddings.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(-(weight @ mean))
    return head.eval()


@torch.inference_mode()
def embed(encoder: Encoder, crops: Sequence[np.ndarray], batch_size: int = 32) -> torch.Tensor:
    """Embeddings (N, D) of crops, computed in batches."""
    parts = [encoder(encoder.preprocess(crops[i:i + batch_size])) for i in range(0, len(crops), batch_size)]
    return torch.cat(parts).float()


@dataclass(frozen=True)
class CheckResult:
    """How a runtime's embeddings compare with torch fp32's on the check crops."""

    runtime: str
    n: int
    cosine_mean: float | None
    cosine_min: float | None
    top1_agreement: float | None
    passed: bool
    #: How many distinct top-1 labels the reference gives (1 would make agreement meaningless).
    labels_seen: int
    head: str
    crops: str
    seconds: float
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.error:
            return f"{self.runtime}: not checked ({self.error})"
        verdict = "passes" if self.passed else "FAILS"
        return (f"{self.runtime}: {verdict} (cosine mean {self.cosine_mean:.4f}, min {self.cosine_min:.4f}; "
                f"top-1 agreement {self.top1_agreement:.1%} over {self.n} crops)")


class AccuracyCheck:
    """torch fp32's embeddings and top-1 labels on face crops, computed once; call it with a runtime.

    head: the model's head, or None for a fixed random linear head (`random_head`); its name is reported.
    """

    def __init__(self, reference: Encoder, crops: CheckCrops | None = None, head: nn.Module | None = None) -> None:
        self.crops = crops or check_crops()
        if not self.crops.crops:
            raise ValueError("the accuracy check needs at least one face crop")
        self._reference_encoder = reference
        self.reference = embed(reference, self.crops.crops)
        self.head_name = ("the model's head" if head is not None else f"a fixed random linear head (seed 0) "
                          f"over the {HEAD_DIRECTIONS} principal directions of the torch embeddings")
        self.head = (head if head is not None else random_head(self.reference)).eval()
        self.labels = self._labels(self.reference)

    @torch.inference_mode()
    def _labels(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(embeddings).argmax(dim=1)

    def __call__(self, encoder: Encoder) -> CheckResult:
        start = time.perf_counter()
        got = self.reference if encoder is self._reference_encoder else embed(encoder, self.crops.crops)
        cosine = torch.nn.functional.cosine_similarity(got, self.reference, dim=1)
        agreement = float((self._labels(got) == self.labels).float().mean())
        cos_mean = float(cosine.mean())
        return CheckResult(runtime=runtime_name(encoder), n=len(self.crops.crops), cosine_mean=round(cos_mean, 6),
                           cosine_min=round(float(cosine.min()), 6), top1_agreement=round(agreement, 4),
                           passed=cos_mean >= COSINE_MIN and agreement >= TOP1_MIN,
                           labels_seen=int(self.labels.unique().numel()), head=self.head_name,
                           crops=self.crops.source, seconds=round(time.perf_counter() - start, 2))

    def failure(self, runtime: str, error: str) -> CheckResult:
        """The result for a runtime that could not be built."""
        return CheckResult(runtime=runtime, n=0, cosine_mean=None, cosine_min=None, top1_agreement=None,
                           passed=False, labels_seen=int(self.labels.unique().numel()), head=self.head_name,
                           crops=self.crops.source, seconds=0.0, error=error)


def check_runtimes(encoder: Encoder, names: Sequence[str], *, crops: CheckCrops | None = None,
                   head: nn.Module | None = None, threads: int | None = None, cache_dir: Path | None = None,
                   progress: Progress | None = log, shipped: Mapping[str, Path] | None = None) -> list[CheckResult]:
    """The accuracy check of each runtime in `names` against `encoder` in torch fp32, one runtime in memory at
    a time; a runtime that cannot be built gets a result with its `error`."""
    require_known(names)
    check = AccuracyCheck(encoder, crops, head)
    results = []
    for name in names:
        try:
            candidate = load_runtime(encoder, name, threads=threads, cache_dir=cache_dir, progress=progress,
                                     shipped=shipped)
        except RuntimeUnavailable as exc:
            results.append(check.failure(name, str(exc)))
            continue
        results.append(check(candidate))
        del candidate
    return results


# -------------------------------------------------------------------------------------- timing

def time_calls(call: Callable[[], object], repeats: int, warmup: int = 1,
               budget_s: float | None = None) -> list[float]:
    """Seconds taken by each of `repeats` calls of `call()`, after `warmup` untimed calls; with `budget_s`,
    no new call starts once the timed ones took that long (at least one is timed)."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if budget_s is not None and sum(times) >= budget_s:
            break
    return times


def tile_batch(pixels: torch.Tensor, batch: int) -> torch.Tensor:
    """The first `batch` rows of `pixels`, repeated cyclically when there are fewer."""
    index = torch.arange(batch) % len(pixels)
    return pixels[index].contiguous()


@torch.inference_mode()
def speed_score(encoder: Encoder, pixels: torch.Tensor, repeats: int = 5) -> float:
    """Mean over AUTO_TIMING_BATCHES of the median ms per face: what `auto` ranks runtimes by. Each batch
    size gets at most `AUTO_TIMING_BUDGET_S` of timed calls, so a slow runtime (or a busy machine)
    cannot make a first load long."""
    per_face = [statistics.median(time_calls(functools.partial(encoder, tile_batch(pixels, b)), repeats,
                                             budget_s=AUTO_TIMING_BUDGET_S)) * 1000 / b
                for b in AUTO_TIMING_BATCHES]
    return float(np.mean(per_face))


# ------------------------------------------------------------------------------------ selection

@dataclass(frozen=True)
class RuntimeChoice:
    """What runtime an encoder runs in and why; `select_runtime` puts one on the encoder it returns
    (`runtime_choice`). how: "auto" (checked and timed now), "stored" (auto's earlier decision on this
    machine), "pinned" ($FER_APP_RUNTIME) or "asked" (an explicit runtime, not checked)."""

    runtime: str
    how: str
    reason: str
    #: auto's measurements: runtime -> {"check": CheckResult dict, "ms_per_face": float} or {"skipped": why}.
    candidates: dict[str, dict] = field(default_factory=dict)

    def summary(self) -> str:
        return f"{self.runtime} ({self.reason})"


def runtime_choice(encoder: Encoder) -> RuntimeChoice:
    """The `RuntimeChoice` of an encoder from `select_runtime` (a plain encoder: torch, as built)."""
    choice = getattr(encoder, "runtime_choice", None)
    return choice if isinstance(choice, RuntimeChoice) else RuntimeChoice(runtime_name(encoder), "asked", "as built")


def _with_choice(encoder: Encoder, choice: RuntimeChoice) -> Encoder:
    encoder.runtime_choice = choice
    return encoder


def candidates_for(encoder: Encoder, shipped: Mapping[str, Path] | None = None) -> tuple[str, ...]:
    """The runtimes `auto` considers for an encoder (`CANDIDATES`, all runtimes for an unknown encoder),
    torch first; a shipped runtime only when the model ships its file."""
    names = CANDIDATES.get(encoder.encoder_id, RUNTIMES)
    offered = [r for r in names if r not in SHIPPED_RUNTIMES or r in (shipped or {})]
    return (TORCH, *(r for r in offered if r != TORCH))


def select_runtime(encoder: Encoder, runtime: str = AUTO, *, threads: int | None = None,
                   cache_dir: Path | None = None, check_crops: CheckCrops | None = None,
                   head: nn.Module | None = None, candidates: Sequence[str] | None = None,
                   progress: Progress | None = log, shipped: Mapping[str, Path] | None = None,
                   reference: Reference | None = None) -> Encoder:
    """`encoder` in `runtime`; `auto` picks the fastest runtime that passes the accuracy check here.

    An explicit runtime is built without a check (`check-runtime` checks it) and raises
    RuntimeUnavailable when it cannot run. `auto` never fails for a runtime's sake: it falls back to
    torch. `head` is used for the check's top-1 agreement (a random head when None); `candidates`
    limits the runtimes `auto` considers (torch is always one; default `candidates_for`). `shipped`:
    the model's own runtime files (see `load_runtime`); `reference`: its shipped reference batch, the
    crops of the check (else `check_crops`, else the default `check_crops()`). $FER_APP_RUNTIME, when
    set, is what `auto` means (a pinned runtime is loaded without the selection).
    """
    pinned = os.environ.get(ENV_RUNTIME, "").strip()
    how = "asked"
    if runtime == AUTO and pinned and pinned != AUTO:
        require_known([pinned])
        runtime, how = pinned, "pinned"
    if runtime != AUTO:
        chosen = load_runtime(encoder, runtime, threads=threads, cache_dir=cache_dir, progress=progress,
                              shipped=shipped)
        reason = f"pinned by {ENV_RUNTIME}={pinned}" if how == "pinned" else "asked for; not checked"
        return _with_choice(chosen, RuntimeChoice(runtime, how, reason))
    crops = reference.crops if reference is not None else check_crops
    return _AutoSelection(encoder, resolve_threads(threads), cache_dir, crops, head, candidates,
                          progress or (lambda message: None), shipped or {}, reference).run()


class _AutoSelection:
    """One run of `auto`: a stored decision when there is one, else build, check and time each candidate."""

    def __init__(self, encoder: Encoder, threads: int, cache_dir: Path | None, crops: CheckCrops | None,
                 head: nn.Module | None, candidates: Sequence[str] | None, progress: Progress,
                 shipped: Mapping[str, Path], reference: Reference | None) -> None:
        self.encoder, self.threads, self.head, self.progress = encoder.eval(), threads, head, progress
        self.shipped, self.reference = dict(shipped), reference
        self.cache = ExportCache(encoder, cache_dir, progress)
        self.crops = crops or check_crops()
        require_known(candidates or ())
        listed = candidates or candidates_for(encoder, shipped)
        self.candidates = [TORCH, *(r for r in listed if r != TORCH)]
        self.decision_path = self.cache.root / f"auto-{self._decision_key()[:24]}.json"

    def _decision_key(self) -> str:
        return _json_digest({"format": CACHE_FORMAT, "weights": self.cache.weights_sha256,
                             "head": tensors_digest(self.head) if self.head is not None else "random-0",
                             "crops": self.crops.digest(), "candidates": self.candidates, "threads": self.threads,
                             "shipped": {r: file_digest(Path(f)) for r, f in sorted(self.shipped.items())
                                         if Path(f).is_file()},
                             "cpu": cpu_info(), "thresholds": [COSINE_MIN, TOP1_MIN, AUTO_MIN_GAIN],
                             "versions": versions("torch", "transformers", "onnxruntime", "openvino")})

    def run(self) -> Encoder:
        if not any(unavailable_reason(r) is None for r in self.candidates[1:]):  # nothing to choose between
            only = "torch fp32, the only candidate runtime for this model here"
            return _with_choice(self._load(TORCH), RuntimeChoice(TORCH, "auto", only))
        stored = self._stored_choice()
        if stored is not None:
            runtime, decision = stored
            try:
                chosen = self._load(runtime)  # silently: later loads cost nothing, not even a log line
                return _with_choice(chosen, RuntimeChoice(runtime, "stored", decision.get("reason", "chosen earlier")
                                                          + f"; chosen on this machine {decision.get('created', '')}",
                                                          decision.get("candidates", {})))
            except RuntimeUnavailable as exc:
                self.progress(f"runtime auto: the stored choice {runtime} no longer loads ({exc}); choosing again")
        return self._choose()

    def _stored_choice(self) -> tuple[str, dict] | None:
        try:
            decision = json.loads(self.decision_path.read_text())
        except (OSError, ValueError):
            return None
        choice = decision.get("runtime") if isinstance(decision, dict) else None
        if choice in self.candidates and unavailable_reason(choice) is None:
            return choice, decision
        return None

    def _load(self, runtime: str) -> Encoder:
        return load_runtime(self.encoder, runtime, threads=self.threads, progress=self.progress, cache=self.cache,
                            shipped=self.shipped)

    def _choose(self) -> Encoder:
        self.progress(f"runtime auto: checking and timing {', '.join(self.candidates)} on {len(self.crops.crops)} "
                      f"face crops with {self.threads} thread(s), once for these weights on this machine...")
        check = AccuracyCheck(self.encoder, self.crops, self.head)
        if self.reference is not None:
            stale = self.reference.stale_reason(self.encoder, check.reference)
            if stale:
                self.progress(f"runtime auto: {stale}; checking against torch fp32 here all the same")
        pixels = self.encoder.preprocess(self.crops.crops[:8])
        best: tuple[float, str, Encoder, CheckResult] | None = None
        report: dict[str, dict] = {}
        for runtime in self.candidates:
            reason = unavailable_reason(runtime)
            if reason is not None:
                self.progress(f"runtime auto: {runtime} is not available ({reason})")
                report[runtime] = {"skipped": reason}
                continue
            try:
                candidate = self._load(runtime)
                result = check(candidate)
                ms = speed_score(candidate, pixels) if result.passed else math.inf
            except Exception as exc:  # noqa: BLE001 - auto never fails for one runtime's sake
                self.progress(f"runtime auto: skipping {runtime}: {exc}")
                report[runtime] = {"skipped": f"{type(exc).__name__}: {exc}"}
                continue
            report[runtime] = {"check": result.to_dict()}
            if not result.passed:
                self.progress(f"runtime auto: refusing {result.summary()}")
                continue
            report[runtime]["ms_per_face"] = round(ms, 3)
            self.progress(f"runtime auto: {runtime} passes its check, {ms:.2f} ms per face")
            if best is None or ms < best[0] * (1 - AUTO_MIN_GAIN):
                best = (ms, runtime, candidate, result)
            del candidate
        if best is None:  # torch always passes against itself; only a broken reference gets here
            raise RuntimeUnavailable("no runtime passed the accuracy check, not even torch")
        ms, runtime, chosen, result = best
        reason = self._reason(result, report)
        self._store(runtime, reason, report)
        self.progress(f"runtime auto: chose {runtime} ({reason})")
        return _with_choice(chosen, RuntimeChoice(runtime, "auto", reason, report))

    @staticmethod
    def _reason(result: CheckResult, report: dict[str, dict]) -> str:
        timed = ", ".join(f"{r} {v['ms_per_face']:.2f}" for r, v in report.items() if "ms_per_face" in v)
        refused = [r for r, v in report.items() if "check" in v and not v["check"]["passed"]]
        text = (f"fastest passing the accuracy check here: cosine {result.cosine_mean:.4f}, top-1 "
                f"{result.top1_agreement:.1%} vs torch fp32; ms per face {timed}")
        return text + (f"; refused: {', '.join(refused)}" if refused else "")

    def _store(self, runtime: str, reason: str, report: dict[str, Any]) -> None:
        decision = {"runtime": runtime, "reason": reason, "threads": self.threads, "cpu": cpu_info(),
                    "crops": self.crops.source, "shipped": {r: str(f) for r, f in self.shipped.items()},
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "candidates": report}
        with contextlib.suppress(OSError):  # a read-only models/ only costs the next load a new choice
            self.decision_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.decision_path.with_name(self.decision_path.name + f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(decision, indent=2, default=str) + "\n")
            os.replace(tmp, self.decision_path)
