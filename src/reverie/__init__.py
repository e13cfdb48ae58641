"""reverie — make a language model dream with Evolutionary Prompt Optimization (EPO).

Every public name is here after `import reverie` (docs/design.md#module-map says where each lives).
The report and the faces page need the `report` extra (matplotlib, jinja2): `write_report` and
`write_faces` import it when called.
"""

from .version import __version__  # noqa: E402,F401

from .errors import ConfigError, ModelError, ReverieError, RunDirError, TargetError  # noqa: E402
from .lm.model import Model, load_model  # noqa: E402
from .lm.sae import SAEFeature, SAEWeights, train_sae  # noqa: E402
from .lm.targets import Attention, Custom, Direction, Logit, Neuron, Target, parse_target  # noqa: E402
from .lm.vocab import Vocabulary  # noqa: E402
from .scoring import PackedScorer, PlainScorer, Scorer, make_scorer  # noqa: E402
from .search.config import EPOConfig  # noqa: E402
from .search.epo import EPO, EPOState, Step  # noqa: E402
from .search.frontier import best_at, merge, pareto, summary  # noqa: E402
from .evidence.attribution import attribute  # noqa: E402
from .evidence.baseline import Baseline, random_baseline  # noqa: E402
from .evidence.scan import ScanConfig, read_scan, scan  # noqa: E402
from .runs.diverse import diverse  # noqa: E402
from .runs.dream import DreamResult, dream, load_run, resume  # noqa: E402
from .sweeps.sweep import SweepEvent, sweep  # noqa: E402


def write_report(run, **kw):
    """Write a run's self-contained report.html (see `reverie.report.run.write_report`; needs reverie[report])."""
    from .report.run import write_report as write
    return write(run, **kw)


def write_faces(out, results=None):
    """Write OUT/faces.html for a diverse dream (see `reverie.report.faces.write_faces`; needs reverie[report])."""
    from .report.faces import write_faces as write
    return write(out, results)


__all__ = [
    "Attention", "Baseline", "ConfigError", "Custom", "Direction", "DreamResult", "EPO", "EPOConfig", "EPOState",
    "Logit", "Model", "ModelError", "Neuron", "PackedScorer", "PlainScorer", "ReverieError", "RunDirError",
    "SAEFeature", "SAEWeights", "ScanConfig", "Scorer", "Step", "SweepEvent", "Target", "TargetError", "Vocabulary",
    "attribute", "best_at", "diverse", "dream", "load_model", "load_run", "make_scorer", "merge", "pareto",
    "parse_target", "random_baseline", "read_scan", "resume", "scan", "summary", "sweep", "train_sae",
    "write_faces", "write_report",
]
