"""Bulk prediction: a whole image collection into a results file (CSV, JSON lines or Parquet), one row per image,
written in atomically completed parts and resumable after a kill: on this machine, images decoded in worker processes
while the model runs (:mod:`.local`), or on Ray Data (:mod:`.ray_engine`); :mod:`.files` writes and reads the rows,
:mod:`.run` checks the arguments and picks the engine."""

from .files import OUT_FORMATS, PART_ROWS, ResultsError, Summary, describe, read_meta, sidecar
from .run import ENGINES, predict_files

__all__ = ["ENGINES", "OUT_FORMATS", "PART_ROWS", "ResultsError", "Summary", "describe", "predict_files", "read_meta",
           "sidecar"]  # fmt: skip
