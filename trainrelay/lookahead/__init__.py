"""Look-ahead analysis: perturb the future, require the past to stay the same.

In the manner of freqtrade's ``lookahead-analysis``: for several cut times ``t`` every raw record
after ``t`` is replaced by a different but valid market (:mod:`.perturb`), the run's stages are
recomputed in-process through the rules' own library functions (:mod:`.recompute`), and every output
at or before ``t`` must be unchanged (:mod:`.compare`, :mod:`.check`, which also says what "at or
before t" means for fitted objects such as the train-only scaler). ``python -m trainrelay lookahead``
is the command; docs/lookahead.md the guide.
"""

from trainrelay.lookahead.check import (
    STAGES,
    Cut,
    LookaheadLeak,
    Report,
    format_table,
    leak_line,
    run_lookahead,
    write_report,
)

__all__ = [
    "STAGES",
    "Cut",
    "LookaheadLeak",
    "Report",
    "format_table",
    "leak_line",
    "run_lookahead",
    "write_report",
]
