"""Static int8 quantization of a compact model's encoder, shipped in its model folder.

The compact CNN's convolutions are most of its cost. `quantize_model` exports the encoder to ONNX and
quantizes it with ONNX Runtime's static quantizer (QDQ): weights int8 per output channel with
`reduce_range` (7-bit: within [-64, 64]), activations uint8, scales calibrated on training faces;
the first convolution (on the grey pixels: one input channel, 0.5% of the multiply-adds) stays fp32,
which took val top-1 agreement with fp32 from 99.0% to 99.2% (mean cosine 0.9994 -> 0.9997).

Why 7-bit weights: on x86 CPUs without VNNI (AVX2-only, e.g. first-generation Zen and most laptops
sold before 2020), ONNX Runtime's u8s8 kernels multiply with VPMADDUBSW, which adds two uint8 x int8
products into a saturating int16. With 8-bit weights, 2 x 255 x 127 = 64770 overflows it and the
same file that is exact on an AVX-512 VNNI CPU gives wrong labels there (measured under an emulated
first-generation Zen: 88% top-1 agreement with fp32, mean cosine 0.92). With 7-bit weights the pair
sum is at most 2 x 255 x 64 = 32640 < 32767: nothing can saturate on any x86 kernel. VNNI kernels
(VPDPBUSD) accumulate in int32 and were never affected; on them 7-bit weights cost a little
precision, which the gate below measures. u8u8 (8-bit unsigned weights) also avoids saturation but
ran 2.8x slower on an AVX-512 VNNI CPU (no VNNI kernel for it), so it is not used.

The file is kept only if, against the fp32 model, (1) it passes the runtime accuracy check
(`fer_app.runtimes.AccuracyCheck`: mean cosine of the embeddings and top-1 agreement) on the model's
reference batch, and (2) with a val split, its top-1 predictions (with the model's TTA views) agree
with fp32's on at least `min_agreement` of the val faces. It is written as `encoder.int8.onnx` next
to the weights, with the reference batch (`reference.safetensors`: real face crops and torch fp32's
embeddings of them, which every machine checks the runtimes against on first load) and a `quantized`
entry in config.json: the sha256 of the weights it was made from, the method, the calibration, the
weight range and the val figures. `fer_app.runtimes` offers the file to `auto` as "onnx-int8-static";
each machine checks it before using it. An ONNX file is a protobuf: loading it never unpickles anything.
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
from fer_app.model import (CARD_FILE, CONFIG_FILE, QUANTIZED_FILE, QUANTIZED_KEY, WEIGHTS_FILE, Classifier,
                           file_sha256, load_model, read_config)
from fer_app.modelcard import quantized_section, with_section
from fer_app.runtimes import ONNX_INT8_STATIC, weight_range

CONFIG_KEY = QUANTIZED_KEY
#: Calibration faces drawn from the training data (stratified by class).
DEFAULT_CALIBRATION = 512
#: The val top-1 agreement with fp32 a file needs to be kept.
MIN_AGREEMENT = 0.99
METHOD = ("ONNX Runtime static QDQ: weights int8 per channel with reduce_range "
          f"(7-bit, |w| <= {runtimes.SAFE_WEIGHT_MAX}: no VPMADDUBSW saturation on CPUs without VNNI), "
          "activations uint8 (min-max calibration); the first convolution (1 input channel, 0.5% of the MACs) "
          "stays fp32")


class QuantizeError(RuntimeError):
    """Quantization could not be done or would not be kept; the model folder is unchanged."""


@dataclass(frozen=True)
class QuantizeReport:
    file: str
    weights_sha256: str
    method: str
    calibration: dict
    #: The int8 weights' range: [min, max]; within +-runtimes.SAFE_WEIGHT_MAX on every CPU kernel.
    weight_range: list[int]
    #: The runtime check on the reference batch (`fer_app.runtimes.CheckResult` as a dict).
    reference_check: dict
    val: dict | None  # {"n", "accuracy_fp32", "accuracy_int8", "agreement"} when val faces were given

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_sample(faces: FaceSet, count: int, seed: int = 0) -> np.ndarray:
    """Up to `count` faces, the same share of each class, in a reproducible order."""
    rng = np.random.default_rng(seed)
    labels = faces.labels
    classes = np.unique(labels)
    per_class = max(1, count // max(1, len(classes)))
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    idx = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    return faces.images[np.sort(idx)]


def _pixels(model: Classifier, images: np.ndarray) -> np.ndarray:
    return model.encoder.preprocess(list(images)).numpy().astype(np.float32)


def quantize_encoder(model: Classifier, calibration: np.ndarray, target: Path) -> str:
    """Write the model's encoder as a static-int8 ONNX file (see the module docstring); returns the method."""
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
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                                reduce_range=True, nodes_to_exclude=_first_conv(pre))
        except Exception as exc:  # noqa: BLE001 - the quantizer raises many types
            raise QuantizeError(f"int8 quantization failed: {type(exc).__name__}: {str(exc).strip()[:200]}") from exc
    return METHOD


def _first_conv(path: Path) -> list[str]:
    """The name of the graph's first Conv (the one on the grey pixels), as a list for `nodes_to_exclude`."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"][:1]


def quantize_model(folder: Path, calibration: FaceSet, val: FaceSet | None = None, *,
                   count: int = DEFAULT_CALIBRATION, min_agreement: float = MIN_AGREEMENT,
                   threads: int | None = None) -> QuantizeReport:
    """Quantize the compact model in `folder`; kept only when it passes the checks of the module docstring."""
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
    digest = file_sha256(folder / WEIGHTS_FILE)
    reference_tmp = folder / (runtimes.REFERENCE_FILE + ".new")
    try:
        low, high = weight_range(tmp)
        problem = runtimes.saturation_risk(low, high)
        if problem is not None:
            raise QuantizeError(f"{problem}; not kept")
        quantized = load_model(folder, runtime="torch")
        quantized.encoder = runtimes.load_runtime(quantized.encoder, ONNX_INT8_STATIC, threads=threads,
                                                  shipped={ONNX_INT8_STATIC: tmp}, progress=None)
        reference = runtimes.write_reference(reference_tmp, model.encoder)
        check = runtimes.AccuracyCheck(model.encoder, reference.crops, model.head)(quantized.encoder)
        if not check.passed:
            raise QuantizeError(f"the int8 encoder fails the accuracy check on the reference batch: {check.summary()}; "
                                "not kept")
        val_report = None
        if val is not None and len(val):
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
                                {"n": len(sample), "source": calibration.source, "per_class": "equal"},
                                [low, high], check.to_dict(), val_report)
        cfg = read_config(folder)
        cfg[CONFIG_KEY] = report.to_dict()
        cfg_tmp = folder / (CONFIG_FILE + ".tmp")
        cfg_tmp.write_text(json.dumps(cfg, indent=2))
        card_path = folder / CARD_FILE
        card = with_section(card_path.read_text(), quantized_section(cfg[CONFIG_KEY])) if card_path.is_file() else None
        os.replace(tmp, target)
        os.replace(reference_tmp, folder / runtimes.REFERENCE_FILE)
        os.replace(cfg_tmp, folder / CONFIG_FILE)
        if card is not None:
            card_path.write_text(card)
    finally:
        tmp.unlink(missing_ok=True)
        reference_tmp.unlink(missing_ok=True)
    return report


def _predict(model: Classifier, images: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([model.predict_proba(list(images[i:i + batch])).argmax(1)
                           for i in range(0, len(images), batch)])
