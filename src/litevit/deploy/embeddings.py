"""The pre-logits features beside the class logits: :func:`with_embeddings` wraps a classifier so that one forward pass
gives both, eager (bulk prediction's ``--embeddings``) or exported, where the features are the graph's second
output, named :data:`EMBEDDING`, which :class:`.runtime.ExportedModel` reads (ONNX and OpenVINO files)."""

from __future__ import annotations

import torch
from torch import nn

from ..models.features import FeatureExtractor

EMBEDDING = "embedding"  # the graph output holding the pre-logits features


class WithEmbeddings(nn.Module):
    """A classifier's logits ``B, num_classes`` and its pre-logits features ``B, num_features``, from one
    ``forward_features`` and its ``forward_head`` with and without ``pre_logits`` (timm's API; every litevit family
    has it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        return self.model.forward_head(features), self.model.forward_head(features, pre_logits=True).flatten(1)


def with_embeddings(model: nn.Module) -> WithEmbeddings:
    """``model`` (a litevit classifier, fused or not) giving ``(logits, embedding)``; to export it, give it to the
    ONNX or OpenVINO converters (:func:`.onnx.onnx_model`, :func:`.openvino.openvino_ir`), which name the outputs
    ``logits`` and :data:`EMBEDDING`. One line for a model without that API, or a features model."""
    if isinstance(model, WithEmbeddings):
        return model
    api = callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))
    if isinstance(model, FeatureExtractor) or not api:
        raise ValueError(
            f"{type(model).__name__} is not a classifier with forward_features / forward_head (timm's API): it has no "
            "pre-logits features to give"
        )
    return WithEmbeddings(model).train(model.training)  # a new module trains by default: keep the model's mode
