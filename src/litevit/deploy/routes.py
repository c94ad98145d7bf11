"""One name per deployment route: the runtime that runs a file and the precision it computes in.

A :class:`Route` is the one vocabulary of ``litevit export --fastest``, the bench, the records and the tools: its
:attr:`Route.name` (``ort-fp32``, ``ov-int8-bf16`` ...) is the only spelling of a route anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from .precision import PRECISIONS, check_precision

RUNTIMES = {"onnxruntime": ("ort", ".onnx", "onnx"), "openvino": ("ov", ".xml", "openvino")}  # short, suffix, format


@dataclass(frozen=True)
class Route:
    """A runtime (``onnxruntime`` or ``openvino``) and a precision (:data:`.precision.PRECISIONS`)."""

    runtime: str
    precision: str
    accuracy_control: bool = False  # int8 by NNCF's quantize_with_accuracy_control (OpenVINO, labelled images)

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; expected one of {', '.join(RUNTIMES)}")
        check_precision(self.precision)
        if self.accuracy_control and (self.runtime, self.precision) != ("openvino", "int8"):
            raise ValueError("accuracy-controlled quantization is an OpenVINO int8 route")

    @property
    def name(self) -> str:
        return f"{RUNTIMES[self.runtime][0]}-{self.precision}" + ("-ac" if self.accuracy_control else "")

    @property
    def suffix(self) -> str:
        return RUNTIMES[self.runtime][1]

    @property
    def format(self) -> str:
        return RUNTIMES[self.runtime][2]

    @property
    def int8(self) -> bool:
        return self.precision.startswith("int8")

    @property
    def float_exact(self) -> bool:
        """Whether the route computes in fp32 throughout: its outputs are fp32's up to rounding."""
        return self.precision == "fp32"

    @property
    def module(self) -> str:
        """The Python module that runs it (the optional extra that installs it: :mod:`litevit._extras`)."""
        return self.runtime


# every route --fastest knows, in the order its table lists them; onnxruntime's CPU provider has no bf16 kernels
ROUTES = (
    Route("onnxruntime", "fp32"),
    Route("onnxruntime", "int8"),
    *(Route("openvino", p) for p in PRECISIONS),
    Route("openvino", "int8", accuracy_control=True),
)
BASELINE = ROUTES[0]  # ort-fp32: what speed-ups are measured against


def route_named(name: str) -> Route:
    """The route called ``name``; ValueError listing the known names otherwise."""
    for route in ROUTES:
        if route.name == name:
            return route
    raise ValueError(f"unknown route {name!r}; expected one of {', '.join(r.name for r in ROUTES)}")


def route_of(format: str, precision: str) -> Route | None:
    """The route of a file in ``format`` computing in ``precision``, None for formats no route runs."""
    for route in ROUTES:
        if route.format == format and route.precision == precision and not route.accuracy_control:
            return route
    return None
