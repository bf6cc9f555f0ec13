"""pinnzo: physics-informed neural networks trained without back-propagation.

The Python API (the ``pinnzo`` command is a thin layer over it):

    import pinnzo
    problem = pinnzo.load_problem("problems/hjb20.yaml")      # or a mapping with the same keys
    run = pinnzo.solve(problem, backend="sparse-grid", optimizer="zo-signrge", steps=200, out="results/x")
    run.summary["final_rel_l2"]; run.predict(X)
    run = pinnzo.load_run("results/x")
"""

__version__ = "0.1.0"

from pinnzo.errors import PinnzoError  # noqa: E402
from pinnzo.pinn import Run, load_run, solve  # noqa: E402
from pinnzo.problem import Problem, load_problem  # noqa: E402
from pinnzo.quadrature import Rule, build_rule, get_rule  # noqa: E402
from pinnzo.settings import MnistSettings, Settings  # noqa: E402

__all__ = ["MnistSettings", "PinnzoError", "Problem", "Rule", "Run", "Settings", "build_rule", "get_rule",
           "load_problem", "load_run", "solve", "__version__"]
