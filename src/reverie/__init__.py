"""reverie — make a language model dream with Evolutionary Prompt Optimization (EPO).

Every public name is here after `import reverie` (docs/design.md#module-map says where each lives).
Names are imported on first use (PEP 562), so `import reverie` and the CLI's help and input errors
answer before torch and transformers load. The report and the faces page need the `report` extra
(matplotlib, jinja2).
"""

from __future__ import annotations

import importlib

from .errors import ConfigError, ModelError, ReverieError, RunDirError, TargetError  # noqa: F401
from .version import __version__  # noqa: F401

_WHERE = {  # public name -> the module that defines it
    "lm.model": ("Model", "load_model"),
    "lm.foreign": ("as_model",),
    "lm.sae": ("SAEFeature", "SAEWeights", "train_sae"),
    "lm.targets": ("Attention", "Custom", "Direction", "Logit", "Neuron", "Target", "combine", "parse_target"),
    "lm.algebra": ("Combination", "not_neighbours"),
    "lm.vocab": ("Vocabulary",),
    "scoring": ("PackedScorer", "PlainScorer", "Scorer", "ScoringOptions", "VocabularyOptions", "make_scorer"),
    "search.config": ("EPOConfig",),
    "search.epo": ("EPO", "EPOState", "Step"),
    "search.frontier": ("best_at", "merge", "pareto", "summary"),
    "evidence.attribution": ("attribute",),
    "evidence.baseline": ("Baseline", "random_baseline"),
    "evidence.tokens": ("per_token",),
    "evidence.scan": ("ScanConfig", "read_scan", "scan"),
    "evidence.features": ("FeatureIndex", "IndexConfig", "build_index", "find_index"),
    "evidence.readability": ("real_word_share",),
    "evidence.windows": ("windows_for",),
    "runs.diverse": ("diverse",),
    "runs.dream": ("DreamResult", "dream", "load_run", "resume"),
    "runs.export": ("export", "read_export"),
    "sweeps.sweep": ("SweepEvent", "sweep"),
    "report.run": ("write_report",),
    "report.faces": ("write_faces",),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(["ConfigError", "ModelError", "ReverieError", "RunDirError", "TargetError", *_MODULE])


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module 'reverie' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
