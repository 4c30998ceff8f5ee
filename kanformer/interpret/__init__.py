"""Looking inside KAN layers: edge and unit activity, pruning, symbolic snapping, and the `kanformer inspect` report.

    from kanformer.interpret import edge_activity, prune_model, fit_symbolic
"""

from .activity import edge_activity, edge_function, ffn_activity, unit_scores
from .prune import PruneReport, drop_units, prune_edges, prune_model
from .symbolic import FUNCTIONS, SymbolicFit, fit_symbolic, kan_formula, snap_kan

__all__ = ["FUNCTIONS", "PruneReport", "SymbolicFit", "drop_units", "edge_activity", "edge_function", "ffn_activity",
           "fit_symbolic", "kan_formula", "prune_edges", "prune_model", "snap_kan", "unit_scores"]
