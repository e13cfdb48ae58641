"""reverie — make a language model dream with Evolutionary Prompt Optimization (EPO)."""

__version__ = "0.1.0"

from .runs.dream import DreamResult, dream, load_run, resume  # noqa: E402
from .search.config import EPOConfig  # noqa: E402
from .search.epo import EPO, EPOState, Step  # noqa: E402
from .errors import ConfigError, ModelError, ReverieError, RunDirError, TargetError  # noqa: E402
from .search.frontier import best_at, merge, pareto, summary  # noqa: E402
from .lm.model import Model, load_model  # noqa: E402
from .evidence.baseline import Baseline, random_baseline  # noqa: E402
from .lm.targets import Attention, Custom, Direction, Logit, Neuron, Target, parse_target  # noqa: E402
from .sweeps.sweep import SweepEvent, sweep  # noqa: E402  (reverie.sweep is this function; the module is sys.modules["reverie.sweep"])


def write_report(run, **kw):
    """Write a run's self-contained report.html (see `reverie.report.write_report`; needs reverie[report])."""
    from .report.run import write_report as write
    return write(run, **kw)


__all__ = [
    "Attention", "ConfigError", "Custom", "Direction", "DreamResult", "EPO", "EPOConfig", "EPOState",
    "Logit", "Model", "ModelError", "Neuron", "ReverieError", "RunDirError", "Step", "Target", "TargetError",
    "Baseline", "best_at", "dream", "load_model", "load_run", "merge", "pareto", "parse_target", "random_baseline",
    "resume", "summary", "write_report",
    "SweepEvent", "sweep",
]
