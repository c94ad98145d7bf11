"""``python -m litevit.train``, the training entry point of earlier releases: one line pointing to its successor.

Training moved to ``python -m litevit train`` (:mod:`litevit.training.train`; the same under ``torchrun``).
"""

from __future__ import annotations

import sys

MOVED = "python -m litevit.train is now python -m litevit train (also under torchrun; see its --help)"


def main() -> int:
    print(MOVED, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
