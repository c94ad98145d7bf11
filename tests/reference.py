"""The reference fixtures in ../shared/refs (see its README): weight recipe, checkpoint writing, comparison."""

from __future__ import annotations

import fnmatch
import json
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def refs_dir() -> Path:
    return Path(os.environ.get("LITEVIT_REFS", ROOT.parent / "shared" / "refs"))


def require_refs() -> Path:
    """The fixture folder; in CI its absence is an error, elsewhere a visible skip."""
    path = refs_dir()
    if not (path / "README.md").is_file():
        message = f"reference fixtures not found at {path} (set LITEVIT_REFS)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def fixture_files(pattern: str) -> list[str]:
    """Fixture json paths relative to the refs folder (collected even when the folder is absent)."""
    path = refs_dir()
    if not path.is_dir():
        return [f"<missing>/{pattern}"]
    return sorted(str(p.relative_to(path)) for p in path.glob(pattern))


def load_fixture(rel: str) -> dict:
    path = require_refs()
    spec = json.loads((path / rel).read_text())
    spec["input_array"] = np.load(path / spec["input"])
    spec["logits_array"] = np.load(path / spec["logits"])
    return spec


def recipe_value(key: str, shape: list[int], scale_rules: list[list] | None = None) -> np.ndarray:
    """The README's weight recipe, in float64 then cast to float32."""
    rs = np.random.RandomState(zlib.crc32(key.encode()))
    if key.endswith("running_var"):
        value = 1 + 0.25 * rs.random_sample(shape)
    elif key.endswith("running_mean"):
        value = 0.1 * rs.standard_normal(shape)
    elif len(shape) <= 1 and key.endswith("weight"):
        value = 1 + 0.1 * rs.standard_normal(shape)
    elif len(shape) <= 1:
        value = 0.1 * rs.standard_normal(shape)
    else:
        value = rs.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))
        for glob, factor in scale_rules or ():
            if fnmatch.fnmatchcase(key, glob):
                value = value * factor
                break
    return np.asarray(value, dtype=np.float64).astype(np.float32)


NonGenerated = Callable[[str, list[int], str], "torch.Tensor | None"]


def recipe_state_dict(spec: dict, non_generated: NonGenerated | None = None) -> dict[str, torch.Tensor]:
    """The fixture's checkpoint, in its own layout and key order.

    Keys marked ``generated: false`` are filled by ``non_generated`` (``None`` leaves them out);
    ``num_batches_tracked`` counters are zero.
    """
    state: dict[str, torch.Tensor] = {}
    for entry in spec["state_dict"]:
        key, shape = entry["key"], entry["shape"]
        if entry["generated"]:
            state[key] = torch.from_numpy(recipe_value(key, shape, spec.get("scale")))
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif non_generated is not None and (value := non_generated(key, shape, entry["dtype"])) is not None:
            state[key] = value
    return state


def assert_logits_match(model: torch.nn.Module, spec: dict) -> float:
    """Run the model as the README says and compare with the fixture; returns the relative error."""
    dtype = torch.float64 if spec["precision"] == "float64" else torch.float32
    model = model.to(dtype).eval()  # eval after the cast, as the README asks
    x = torch.from_numpy(spec["input_array"]).to(dtype)
    with torch.no_grad():
        out = model(x)
    expected = torch.from_numpy(spec["logits_array"]).to(torch.float64)
    assert out.shape == expected.shape, f"logits shape {tuple(out.shape)} != fixture {tuple(expected.shape)}"
    err = (out.double() - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err < 1e-4 * scale, f"{spec['variant']}: max |diff| {err:.3e} >= 1e-4 * max |logit| ({scale:.3e})"
    return err / scale
