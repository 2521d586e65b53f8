"""The typed target spec: what one library and its weights are built for, decided once.

The workflow builds a :class:`TargetSpec` per (model, target, quantization) from the config and the family
(rules/common.smk), and the same object reaches convert (its :class:`WeightSpec`), compile and — through the
library's own metadata, which compile writes from it — package. Each value is checked and normalised here
and nowhere else: a prefill chunk larger than the context window is refused here (and, with the same
bound, by hf2mlc.preflight when the DAG is built), not clamped silently as MLC's ``gen_config`` would. Specs travel through Snakemake as plain dicts (:meth:`as_params`), because a
job's parameters are compared as text to decide reruns and unpickled before the package is importable.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from .errors import UserError
from .quantization import (
    DEFAULT_CALIBRATION_TEXT,
    DEFAULT_CALIBRATION_TOKENS,
    METHODS,
    QUANTIZATIONS,
    Method,
    Quantization,
    get_method,
    get_quantization,
)

#: Build targets: this machine's CPU, a Mac (Metal), an iPhone (Metal, system library).
TARGETS = ("host", "mac", "iphone")
#: Devices a bundle is made for (the non-host targets).
DEVICES = ("iphone", "mac")
#: The dtypes MLC's GPT-NeoX accepts for its MLP output (and biases); MLC's default first.
FFN_OUT_DTYPES = ("float32", "float16")
DEFAULT_FFN_OUT_DTYPE = FFN_OUT_DTYPES[0]
#: The Snakemake wildcard pattern of a quantization name: exactly the registry's names.
QUANTIZATION_PATTERN = "|".join(re.escape(name) for name in QUANTIZATIONS)

#: The pattern of the calibrated methods' part of a weights directory (rtn's directory has none).
CALIBRATED_METHOD_PATTERN = "|".join(re.escape(m.name) for m in METHODS.values() if m.calibrated)

_LIB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def quantization_names() -> list[str]:
    """Every quantization the registry supports (config/schema.yaml's enum is checked against this)."""
    return list(QUANTIZATIONS)


def mlc_model_id(name: str, quantization: str) -> str:
    """MLC's naming: <name>-<quantization>-MLC, as in mlc-ai's own Hub repos."""
    return f"{name}-{quantization}-MLC"


def model_lib_name(name: str, quantization: str, target: str) -> str:
    """The model library's name: the MLC model id and target, with characters a C symbol prefix cannot
    hold (the iPhone system library's) replaced, e.g. japanese-large-lm-3_6b-…-q4f16_0-MLC-iphone."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{mlc_model_id(name, quantization)}-{target}")


def system_lib_prefix(lib_name: str) -> str:
    """The symbol prefix MLC's engine derives from a ``model_lib`` name (``-`` -> ``_``, trailing ``_``)."""
    return lib_name.replace("-", "_") + "_"


def model_lib(lib_name: str, target: str) -> str:
    """What an app config's ``model_lib`` names: the system-library key on an iPhone (the prefix without
    its trailing ``_``), the library's own name elsewhere."""
    return system_lib_prefix(lib_name).rstrip("_") if target == "iphone" else lib_name


@dataclass(frozen=True)
class WeightSpec:
    """What the converted weights depend on: the scheme and the dtype the MLP biases are stored in."""

    quantization: Quantization
    ffn_out_dtype: str = DEFAULT_FFN_OUT_DTYPE

    def __post_init__(self) -> None:
        if self.ffn_out_dtype not in FFN_OUT_DTYPES:
            raise UserError(
                f"ffn_out_dtype must be one of {FFN_OUT_DTYPES}, got {self.ffn_out_dtype!r} (config/families/*.yaml)."
            )

    @classmethod
    def create(cls, quantization: str | Quantization, ffn_out_dtype: str = DEFAULT_FFN_OUT_DTYPE) -> WeightSpec:
        q = quantization if isinstance(quantization, Quantization) else get_quantization(quantization)
        return cls(q, ffn_out_dtype)

    def as_params(self) -> dict[str, Any]:
        return {"quantization": self.quantization.name, "ffn_out_dtype": self.ffn_out_dtype}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> WeightSpec:
        return cls.create(params["quantization"], params["ffn_out_dtype"])


@dataclass(frozen=True)
class CalibrationSpec:
    """How convert chooses codes and scales (the format stays the WeightSpec's): the method, and for
    calibrated methods the text they run the model over and the evaluation text it must not share."""

    method: Method
    text: str = DEFAULT_CALIBRATION_TEXT
    tokens: int = DEFAULT_CALIBRATION_TOKENS
    evaluation_text: str | None = None

    @classmethod
    def create(cls, method: str | Method = "rtn", text: str = DEFAULT_CALIBRATION_TEXT,
               tokens: int = DEFAULT_CALIBRATION_TOKENS, evaluation_text: str | None = None) -> CalibrationSpec:
        m = method if isinstance(method, Method) else get_method(method)
        return cls(m, text, tokens, evaluation_text)

    def as_params(self) -> dict[str, Any]:
        if not self.method.calibrated:
            return {"method": self.method.name}
        return {"method": self.method.name, "calibration_text": self.text, "calibration_tokens": self.tokens,
                "evaluation_text": self.evaluation_text}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CalibrationSpec:
        return cls.create(params["method"], params.get("calibration_text", DEFAULT_CALIBRATION_TEXT),
                          params.get("calibration_tokens", DEFAULT_CALIBRATION_TOKENS), params.get("evaluation_text"))


#: MLC's own quantizer: what convert does when a rule names no calibration.
RTN = CalibrationSpec.create("rtn")


@dataclass(frozen=True)
class TargetSpec:
    """One model library: its target, weights, windows, batch size and name. Build with :meth:`create`."""

    target: str
    weights: WeightSpec
    lib_name: str
    context_window_size: int
    prefill_chunk_size: int
    max_batch_size: int = 1

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise UserError(f"build target {self.target!r} is not supported; use one of: {', '.join(TARGETS)}.")
        if not _LIB_NAME_RE.match(self.lib_name):
            raise UserError(
                f"model library name {self.lib_name!r} is invalid: use letters, digits, '_' and '-', not starting "
                "with a digit (it becomes the iOS system-library symbol prefix)."
            )
        if len(system_lib_prefix(self.lib_name)) < 8:
            # apache-tvm 0.27 keeps strings under 8 bytes inline, and relax.build then fails to read the prefix.
            raise UserError(f"model library name {self.lib_name!r} is too short: use at least 7 characters.")
        if self.context_window_size <= 0:
            raise UserError(f"context_window_size must be positive, got {self.context_window_size} (config/config.yaml).")
        if not 0 < self.prefill_chunk_size <= self.context_window_size:
            raise UserError(
                f"prefill_chunk_size must be between 1 and context_window_size ({self.context_window_size}), "
                f"got {self.prefill_chunk_size} (config/config.yaml)."
            )
        if self.max_batch_size <= 0:
            raise UserError(f"max_batch_size must be positive, got {self.max_batch_size}.")

    @classmethod
    def create(
        cls,
        *,
        target: str,
        quantization: str | Quantization,
        lib_name: str,
        context_window_size: int,
        prefill_chunk_size: int,
        ffn_out_dtype: str = DEFAULT_FFN_OUT_DTYPE,
        max_batch_size: int = 1,
    ) -> TargetSpec:
        """The spec of one library; invalid values are refused with the setting named (``__post_init__``)."""
        return cls(
            target=target,
            weights=WeightSpec.create(quantization, ffn_out_dtype),
            lib_name=lib_name,
            context_window_size=context_window_size,
            prefill_chunk_size=prefill_chunk_size,
            max_batch_size=max_batch_size,
        )

    @property
    def quantization(self) -> Quantization:
        return self.weights.quantization

    @property
    def ffn_out_dtype(self) -> str:
        return self.weights.ffn_out_dtype

    @property
    def system_lib_prefix(self) -> str | None:
        """The symbol prefix of an iPhone system library; other targets make ordinary libraries."""
        return system_lib_prefix(self.lib_name) if self.target == "iphone" else None

    @property
    def model_lib(self) -> str:
        return model_lib(self.lib_name, self.target)

    def as_params(self) -> dict[str, Any]:
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "weights"}
        return {**params, **self.weights.as_params()}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TargetSpec:
        return cls.create(**params)


@dataclass(frozen=True)
class PackageSpec:
    """What a bundle says about itself beyond its library: device, names and where the model came from."""

    device: str
    model_id: str
    name: str
    source: str
    family: str
    quantization: str
    #: False: the app downloads the weights from ``hub_repo`` (MLC's ``model_url``) instead of bundling them.
    bundle_weight: bool = True
    #: The Hub repo the upload publishes this bundle to (owner/name), if it is uploaded.
    hub_repo: str | None = None
    #: The device's ``quality_gate`` bounds (hf2mlc.gate); None: no gate.
    quality_gate: dict[str, float] | None = None
    #: How the bundle's codes and scales were chosen (hf2mlc.quantization.METHODS): the model id names only
    #: the format, so the manifest and the card say which method made the weights.
    method: str = "rtn"

    def __post_init__(self) -> None:
        if not self.bundle_weight and not self.hub_repo:
            raise UserError(
                f"targets.{self.device}.bundle_weight is false, so the app downloads the weights from the Hub, but "
                f"the {self.device} bundle is not published: add {self.device} to upload.devices (config/config.yaml)."
            )

    def as_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PackageSpec:
        return cls(**params)
