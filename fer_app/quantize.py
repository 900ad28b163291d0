"""Static int8 quantization of a compact model's encoder, shipped in its model folder.

The compact CNN's convolutions are most of its cost. `quantize_model` exports the encoder to ONNX,
quantizes weights (int8, per channel) and activations (uint8, scales calibrated on training faces)
with ONNX Runtime's static quantizer, measures the int8 model against the fp32 one on val faces, and
writes `encoder.int8.onnx` next to the weights, with a `quantized` entry in config.json: the sha256
of the weights it was made from, the calibration, and the val accuracy of both. `load_quantized`
swaps it in when it is present, matches the weights and onnxruntime is installed; `load_model`
does so under runtime "auto". An ONNX file is a protobuf: loading it never unpickles anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fer_app import runtimes
from fer_app.data import FaceSet
from fer_app.modelcard import quantized_section, with_section

QUANTIZED_FILE = "encoder.int8.onnx"
#: The runtime name of a compact encoder run from its shipped static-int8 file.
ONNX_INT8_STATIC = "onnx-int8-static"
CONFIG_KEY = "quantized"
#: Calibration faces drawn from the training data (stratified by class).
DEFAULT_CALIBRATION = 512


class QuantizeError(RuntimeError):
    """Quantization could not be done or would not be kept; the model folder is unchanged."""


@dataclass(frozen=True)
class QuantizeReport:
    file: str
    weights_sha256: str
    method: str
    calibration: dict
    val: dict | None  # {"n", "accuracy_fp32", "accuracy_int8", "agreement"} when val faces were given

    def to_dict(self) -> dict:
        return asdict(self)


def weights_digest(folder: Path) -> str:
    from fer_app.model import WEIGHTS_FILE

    return runtimes.file_digest(folder / WEIGHTS_FILE)


def calibration_sample(faces: FaceSet, count: int, seed: int = 0) -> np.ndarray:
    """Up to `count` faces, the same share of each class, in a reproducible order."""
    rng = np.random.default_rng(seed)
    labels = faces.labels
    classes = np.unique(labels)
    per_class = max(1, count // max(1, len(classes)))
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    idx = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    return faces.images[np.sort(idx)]


def _pixels(model, images: np.ndarray) -> np.ndarray:
    return model.encoder.preprocess(list(images)).numpy().astype(np.float32)


def quantize_encoder(model, calibration: np.ndarray, target: Path) -> str:
    """Write the model's encoder as a static-int8 ONNX file; returns a description of the method."""
    if runtimes.unavailable_reason(runtimes.ONNX_FP32):
        raise QuantizeError(f"onnxruntime is needed: {runtimes.unavailable_reason(runtimes.ONNX_FP32)}")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pixels = _pixels(model, calibration)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{runtimes.INPUT_NAME: pixels[i:i + 64]} for i in range(0, len(pixels), 64)])

        def get_next(self) -> dict | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        runtimes.export_onnx(model.encoder.eval(), fp32)
        try:
            with runtimes._quiet():
                quant_pre_process(str(fp32), str(pre))
                quantize_static(str(pre), str(target), Reader(), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        except Exception as exc:  # noqa: BLE001 - the quantizer raises many types
            raise QuantizeError(f"int8 quantization failed: {type(exc).__name__}: {str(exc).strip()[:200]}") from exc
    return "ONNX Runtime static QDQ: weights int8 per channel, activations uint8 (min-max calibration)"


def quantize_model(folder: Path, calibration: FaceSet, val: FaceSet | None = None, *,
                   count: int = DEFAULT_CALIBRATION, min_agreement: float = runtimes.TOP1_MIN,
                   threads: int | None = None) -> QuantizeReport:
    """Quantize the compact model in `folder`; kept only if its val top-1 agrees >= min_agreement with fp32."""
    from fer_app.model import CARD_FILE, CONFIG_FILE, load_model, read_config

    folder = Path(folder)
    model = load_model(folder, runtime="torch")
    if model.encoder.encoder_id != "compact":
        raise QuantizeError(f"{folder}: only compact models are quantized this way (this one is "
                            f"{model.encoder.encoder_id}; CLIP has its runtimes, see check-runtime)")
    sample = calibration_sample(calibration, count)
    if len(sample) == 0:
        raise QuantizeError("no calibration faces")
    target = folder / QUANTIZED_FILE
    tmp = target.with_suffix(".tmp")
    method = quantize_encoder(model, sample, tmp)
    digest = weights_digest(folder)
    val_report = None
    try:
        if val is not None and len(val):
            quantized = load_model(folder, runtime="torch")
            quantized.encoder = _onnx_encoder(quantized.encoder, tmp, threads, digest)
            fp32_pred = _predict(model, val.images)
            int8_pred = _predict(quantized, val.images)
            val_report = {"n": len(val), "source": val.source,
                          "accuracy_fp32": round(float((fp32_pred == val.labels).mean()), 4),
                          "accuracy_int8": round(float((int8_pred == val.labels).mean()), 4),
                          "agreement": round(float((fp32_pred == int8_pred).mean()), 4)}
            if val_report["agreement"] < min_agreement:
                raise QuantizeError(f"the int8 model agrees with fp32 on {val_report['agreement']:.1%} of val "
                                    f"(< {min_agreement:.0%}); not kept")
        report = QuantizeReport(QUANTIZED_FILE, digest, method,
                                {"n": len(sample), "source": calibration.source, "per_class": "equal"}, val_report)
        cfg = read_config(folder)
        cfg[CONFIG_KEY] = report.to_dict()
        cfg_tmp = folder / (CONFIG_FILE + ".tmp")
        cfg_tmp.write_text(json.dumps(cfg, indent=2))
        card_path = folder / CARD_FILE
        card = with_section(card_path.read_text(), quantized_section(cfg[CONFIG_KEY])) if card_path.is_file() else None
        os.replace(tmp, target)
        os.replace(cfg_tmp, folder / CONFIG_FILE)
        if card is not None:
            card_path.write_text(card)
    finally:
        tmp.unlink(missing_ok=True)
    return report


def _predict(model, images: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([model.predict_proba(list(images[i:i + batch])).argmax(1)
                           for i in range(0, len(images), batch)])


def _onnx_encoder(base, path: Path, threads: int | None, digest: str) -> runtimes.RuntimeEncoder:
    return runtimes.OnnxEncoder(base, ONNX_INT8_STATIC, path, runtimes.resolve_threads(threads), digest)


def quantized_problem(folder: Path, cfg: dict) -> str | None:
    """Why the shipped int8 file can't be used (None: it can)."""
    entry = cfg.get(CONFIG_KEY)
    if not isinstance(entry, dict) or not (folder / QUANTIZED_FILE).is_file():
        return f"no {QUANTIZED_FILE} (make one with: python -m fer_app quantize {folder.name} DATA)"
    if entry.get("weights_sha256") != weights_digest(folder):
        return f"{QUANTIZED_FILE} was made from other weights; quantize again"
    return runtimes.unavailable_reason(runtimes.ONNX_FP32)


def load_quantized(model, folder: Path, cfg: dict, threads: int | None = None):
    """`model` with its encoder run from the shipped int8 file; raises QuantizeError when it can't be."""
    problem = quantized_problem(folder, cfg)
    if problem:
        raise QuantizeError(f"{folder}: {problem}")
    try:
        model.encoder = _onnx_encoder(model.encoder, folder / QUANTIZED_FILE, threads,
                                      cfg[CONFIG_KEY]["weights_sha256"])
    except Exception as exc:  # noqa: BLE001 - a damaged file: say which
        raise QuantizeError(f"{folder / QUANTIZED_FILE}: cannot be loaded ({type(exc).__name__}: "
                            f"{str(exc).strip()[:160]})") from None
    return model
