"""Model families; importing a family module registers its variants."""

from . import efficientvit_msra, levit, mobilevit, t2t_vit

__all__ = ["efficientvit_msra", "levit", "mobilevit", "t2t_vit"]
