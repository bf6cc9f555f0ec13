"""pinnzo: physics-informed neural networks trained without back-propagation."""

from pinnzo.errors import PinnzoError
from pinnzo.quadrature import Rule, build_rule, get_rule

__version__ = "0.1.0"
__all__ = ["PinnzoError", "Rule", "build_rule", "get_rule", "__version__"]
