"""Model families; importing a family module registers its variants."""

from . import efficientvit_msra  # noqa: F401
from . import levit

__all__ = ["levit"]
