"""Model families; importing a family module registers its variants."""

from . import levit

__all__ = ["levit"]
