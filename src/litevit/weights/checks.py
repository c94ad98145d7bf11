"""What every load checks, whatever the entry point: the one key-mismatch report and the weights' values.

:func:`load_exact` is for weights that must load as they are (a resumed run, a torchvision teacher); everything else
goes through :mod:`.loading`, which converts, resamples and re-heads first and then runs the same checks.
"""

from __future__ import annotations

from collections.abc import Set

import torch
from torch import nn

from .reading import CheckpointError


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
    return f"{title} ({len(keys)}): {shown}"


def misfit(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], fresh: Set[str] = frozenset()) -> list[str]:
    """The one key-mismatch report: missing keys (but ``fresh``, left as built), unexpected keys, shape mismatches."""
    missing = sorted(set(own) - set(state) - fresh)
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    lists = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched))
    return [_listing(title, keys) for title, keys in lists if keys]


def _file_key(key: str, value: torch.Tensor, raw: dict[str, torch.Tensor] | None) -> str:
    """``key`` as the file names it: converters rename keys but keep the tensors' storage (views, reshapes)."""
    if raw is not None and key not in raw:
        same = [k for k, v in raw.items() if v.data_ptr() == value.data_ptr() and v.numel() == value.numel()]
        if len(same) == 1:
            return f"{same[0]} ({key} in litevit's names)"
    return key


def check_values(
    state: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    source: str,
    raw: dict[str, torch.Tensor] | None = None,
) -> None:
    """Refuse weights that cannot be right: NaN or inf, or integer / bool values where the model has floats.

    ``raw``: the file's own state, so that the message names the tensor as the file does.
    """
    for key, value in state.items():
        target = own.get(key)
        if target is not None and target.is_floating_point() and not value.is_floating_point():
            raise CheckpointError(
                f"{source}: {_file_key(key, value, raw)} holds {value.dtype} values where the model has "
                f"{target.dtype} weights; expected floating-point weights (a damaged or hand-edited file?)"
            )
    floats = [v.reshape(-1) for v in state.values() if v.is_floating_point() and v.numel()]
    if not floats or bool(torch.isfinite(torch.cat(floats)).all()):  # one pass over all weights, not one per tensor
        return
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{source}: {_file_key(key, value, raw)} holds {bad} NaN or infinite value(s) of {value.numel()}; "
                "weights with NaN or inf cannot be right (saved from a diverged run?)"
            )


def load_exact(module: nn.Module, state: dict[str, torch.Tensor], source: str, target: str) -> None:
    """Load ``state`` into ``module`` as it is: the same keys and shapes, finite floats; else one
    :class:`CheckpointError` line (``"{source} does not fit {target}; ..."``). For weights that must not be converted,
    resampled or re-headed: a resumed run's model and EMA, a torchvision teacher's checkpoint."""
    own = module.state_dict()
    problems = misfit(own, state)
    if problems:
        raise CheckpointError(f"{source} does not fit {target}; " + "; ".join(problems))
    check_values(state, own, source)
    module.load_state_dict(state)
