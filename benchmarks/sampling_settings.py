"""The decoding settings sampling.py times against the LLaDA reference: one name per set of ``SampleConfig``
overrides (``--configs NAME ...`` picks some). The reference comes first; every other row is a remasking
rule, a parallel rule, a cache, or a combination.
"""

from __future__ import annotations

from typing import Any

DUAL = {"cache": "dual"}
HIERARCHY = {"remasking": "hierarchy", "threshold": 0.7, "low_threshold": 0.1}  # dInfer's, at this model's confidence
EARLY_EXIT = {"early_stop": True}


def threshold(tau: float) -> dict[str, Any]:
    return {"remasking": "threshold", "threshold": tau}


CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("reference (LLaDA)", {}),
    ("margin", {"remasking": "margin"}),
    ("entropy", {"remasking": "entropy"}),
    ("random", {"remasking": "random"}),
    ("threshold 0.9", threshold(0.9)),
    ("threshold 0.5", threshold(0.5)),
    ("factor 1", {"remasking": "factor", "factor": 1.0}),
    ("factor 3", {"remasking": "factor", "factor": 3.0}),
    ("hierarchy (0.9, low 0.4)", {"remasking": "hierarchy"}),
    ("hierarchy (0.9, low 0.1)", {"remasking": "hierarchy", "low_threshold": 0.1}),
    ("credit 0.7 + threshold 0.9", {**threshold(0.9), "credit": 0.7}),
    ("prefix cache", {"cache": "prefix"}),
    ("dual cache", DUAL),
    ("prefix cache + threshold 0.9", {"cache": "prefix", **threshold(0.9)}),
    # A small model is rarely 90% sure: lower thresholds show the speed/quality trade-off.
    *[(f"dual cache + threshold {tau}", {**DUAL, **threshold(tau)}) for tau in (0.9, 0.7, 0.5, 0.3)],
    *[(f"dual cache + factor {f:g}", {**DUAL, "remasking": "factor", "factor": f}) for f in (1.0, 2.0, 3.0, 5.0)],
    ("dual cache + hierarchy (0.9, low 0.4)", {**DUAL, "remasking": "hierarchy"}),
    ("dual cache + hierarchy (0.9, low 0.1)", {**DUAL, "remasking": "hierarchy", "low_threshold": 0.1}),
    ("dual cache + hierarchy (0.7, low 0.1)", {**DUAL, **HIERARCHY}),
    ("dual cache + credit 0.7 + threshold 0.9", {**DUAL, **threshold(0.9), "credit": 0.7}),
    ("dual cache + credit 0.7 + threshold 0.5", {**DUAL, **threshold(0.5), "credit": 0.7}),
    ("dual cache + credit 0.7 + factor 3", {**DUAL, "remasking": "factor", "factor": 3.0, "credit": 0.7}),
    ("dual cache, refresh every 8 steps", {**DUAL, "cache_refresh": 8}),
    # A full pass at every N-th block start only; the others refresh just the block before (cache_full_every).
    *[(f"dual cache, full pass every {n} blocks", {**DUAL, "cache_full_every": n}) for n in (4, 8, 16)],
    *[(f"dual cache + hierarchy (0.7, low 0.1), full every {n}", {**DUAL, **HIERARCHY, "cache_full_every": n})
      for n in (4, 8, 16)],
    ("dual cache + hierarchy (0.5, low 0.1), full every 4", {**DUAL, **HIERARCHY, "threshold": 0.5,
                                                             "cache_full_every": 4}),
    *[(f"dual cache + threshold {tau}, full every 4", {**DUAL, **threshold(tau), "cache_full_every": 4})
      for tau in (0.9, 0.7)],
    ("dual cache + credit 0.7 + threshold 0.5, full every 4", {**DUAL, **threshold(0.5), "credit": 0.7,
                                                               "cache_full_every": 4}),
    ("ReMDM re-masking (k 1, below 0.5)", {"remask_committed": 1, "remask_below": 0.5}),
    # For a model that ends its answer (tinystories.py's story SFT): stop once the rest is EOS (SampleConfig.early_stop).
    ("dual cache + early exit", {**DUAL, **EARLY_EXIT}),
    *[(f"dual cache + threshold {tau}{every} + early exit", {**DUAL, **threshold(tau), **full, **EARLY_EXIT})
      for tau in (0.9, 0.7) for every, full in (("", {}), (", full every 4", {"cache_full_every": 4}))],
    ("dual cache + hierarchy (0.7, low 0.1), full every 4 + early exit", {**DUAL, **HIERARCHY, "cache_full_every": 4,
                                                                         **EARLY_EXIT}),
]
# The Sudoku task model (planning.py --work-dir DIR keeps it as DIR/mdm-sudoku): the answer is one
# block of 16 digits + end of turn + EOS, so the caches hold the prompt and the threshold rule may
# commit several cells per step. Reference: planning.py's decoding (low_confidence, one cell per step).
TASK_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("reference (LLaDA)", {}),
    ("margin", {"remasking": "margin"}),
    ("entropy", {"remasking": "entropy"}),
    ("random", {"remasking": "random"}),
    *[(f"threshold {tau}", {"remasking": "threshold", "threshold": tau}) for tau in (0.99, 0.95, 0.9, 0.7, 0.5)],
    ("prefix cache", {"cache": "prefix"}),
    ("dual cache + threshold 0.99", {"cache": "dual", "remasking": "threshold", "threshold": 0.99}),
    ("dual cache + threshold 0.9", {"cache": "dual", "remasking": "threshold", "threshold": 0.9}),
    ("prefix cache, refresh every 3 steps", {"cache": "prefix", "cache_refresh": 3}),
    ("dual cache + threshold 0.99, refresh every 2", {"cache": "dual", "cache_refresh": 2, "remasking": "threshold",
                                                      "threshold": 0.99}),
    ("ReMDM re-masking (k 1, below 0.5)", {"remask_committed": 1, "remask_below": 0.5}),
]
# Same cost as the reference: skipped at 1024 unless --rules-at-1024.
RULE_ONLY = {"margin", "entropy", "random", "ReMDM re-masking (k 1, below 0.5)"}
