"""The errors of the deploy layer."""


class ExportError(RuntimeError):
    """An export that failed, or whose output does not match the PyTorch model."""
