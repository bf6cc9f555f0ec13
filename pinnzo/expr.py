"""Safe parsing of untrusted expression strings, and compilation to torch.

Problem files are shared, so their expressions are untrusted. A string is
parsed with Python's ``ast`` and walked against a whitelist (numbers, declared
names, whitelisted functions, + - * / **, unary minus); everything else
(attributes, subscripts, lambdas, strings, keywords, comparisons, dunder
names) is refused before anything reaches sympy. The walk builds the sympy
expression itself: eval, sympify and parse_expr never see the text.

Compiled functions walk the sympy tree once at compile time and return a
closure over torch operations: ``fn(values) -> Tensor`` where ``values`` maps
symbol names to tensors of one batch shape (float32 or float64, any device).
"""

from __future__ import annotations

import ast
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping

import sympy
import torch

MAX_LENGTH = 10_000  # characters in one expression
MAX_DEPTH = 100  # nesting depth of the syntax tree
MAX_LOG10 = 300  # largest magnitude of a constant (10^300)


class ExpressionError(ValueError):
    """An expression string that is not allowed; the message says why."""


SCALAR_FUNCTIONS: dict[str, Callable] = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "exp": sympy.exp, "log": sympy.log,
    "sqrt": sympy.sqrt, "tanh": sympy.tanh, "sinh": sympy.sinh, "cosh": sympy.cosh,
    "asin": sympy.asin, "acos": sympy.acos, "atan": sympy.atan, "abs": sympy.Abs,
    "sign": sympy.sign, "erf": sympy.erf, "erfc": sympy.erfc,
    "max": sympy.Max, "min": sympy.Min, "atan2": sympy.atan2,
}
BINARY_FUNCTIONS = ("max", "min", "atan2")  # the functions of two arguments; atan2(y, x) as in C
CONSTANTS = {"pi": sympy.pi, "e": sympy.E}
VECTOR_REDUCTIONS = ("sum", "prod", "mean", "norm1", "norm2", "norm2sq")


@dataclass(frozen=True)
class Scope:
    """What an expression may refer to.

    Attributes:
        symbols: scalar names -> sympy objects (coordinates x1.., t, parameters...).
        vector: name of the spatial vector (``x``) usable inside reductions, and
            the sympy symbols of its coordinates.
        calls: extra callables by name (e.g. the derivative operators of the
            equation), each taking the already-built sympy arguments.
    """

    symbols: Mapping[str, sympy.Basic]
    vector_name: str | None = None
    vector: tuple[sympy.Symbol, ...] = ()
    calls: Mapping[str, Callable[..., sympy.Basic]] = field(default_factory=dict)

    def known_names(self) -> list[str]:
        names = list(self.symbols) + list(CONSTANTS)
        if self.vector_name:
            names.append(f"{self.vector_name} (inside {', '.join(VECTOR_REDUCTIONS)})")
        return names


def parse(text: object, scope: Scope) -> sympy.Expr:
    """Parse an untrusted expression string into a sympy expression.

    Raises ExpressionError with a one-line reason for anything not allowed.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ExpressionError(f"expected an expression string or a number; found {type(text).__name__}")
    text = str(text)
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is {len(text)} characters long; the limit is {MAX_LENGTH}")
    if not text.strip():
        raise ExpressionError("expression is empty")
    try:
        with warnings.catch_warnings():  # "invalid decimal literal" and the like: not printed, the walk decides
            warnings.simplefilter("ignore")
            tree = ast.parse(text.strip(), mode="eval")
    except (RecursionError, MemoryError):
        raise ExpressionError(f"expression is nested too deeply (limit {MAX_DEPTH} levels)") from None
    except (SyntaxError, ValueError) as error:
        reason = error.msg if isinstance(error, SyntaxError) else str(error)
        raise ExpressionError(f"not a valid expression ({reason})") from None
    return _Builder(scope).build(tree.body, depth=0)


class _Builder:
    def __init__(self, scope: Scope):
        self.scope = scope
        self.in_reduction: sympy.Symbol | None = None

    def build(self, node: ast.AST, depth: int) -> sympy.Expr:
        if depth > MAX_DEPTH:
            raise ExpressionError(f"expression is nested deeper than {MAX_DEPTH} levels")
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise ExpressionError(f"{_describe(node)} is not allowed in an expression")
        return method(node, depth + 1)

    def _Constant(self, node: ast.Constant, depth: int) -> sympy.Expr:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ExpressionError(f"{type(value).__name__} literal {value!r} is not allowed; only numbers")
        if not math.isfinite(value) or (value and math.log10(abs(value)) > MAX_LOG10):
            raise ExpressionError(f"number {value!r} is too large")
        return sympy.Integer(value) if isinstance(value, int) else sympy.Float(repr(value))

    def _Name(self, node: ast.Name, depth: int) -> sympy.Expr:
        name = node.id
        if name.startswith("_"):
            raise ExpressionError(f"name {name!r} is not allowed")
        if name in self.scope.symbols:
            return self.scope.symbols[name]
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name == self.scope.vector_name and self.in_reduction is not None:
            return self.in_reduction
        if name == self.scope.vector_name:
            raise ExpressionError(
                f"the vector {name!r} can only be used inside {', '.join(VECTOR_REDUCTIONS)}(...); "
                f"use its coordinates {self.scope.vector[0]}, ... one by one elsewhere")
        if name in SCALAR_FUNCTIONS or name in VECTOR_REDUCTIONS or name in self.scope.calls:
            raise ExpressionError(f"function {name!r} must be called, e.g. {name}(...)")
        raise ExpressionError(f"unknown name {name!r}; known names: {', '.join(self.scope.known_names())}")

    def _UnaryOp(self, node: ast.UnaryOp, depth: int) -> sympy.Expr:
        operand = self.build(node.operand, depth)
        if isinstance(node.op, ast.USub):
            return -operand
        if isinstance(node.op, ast.UAdd):
            return operand
        raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")

    def _BinOp(self, node: ast.BinOp, depth: int) -> sympy.Expr:
        left, right = self.build(node.left, depth), self.build(node.right, depth)
        op = type(node.op)
        if op is ast.Add:
            return left + right
        if op is ast.Sub:
            return left - right
        if op is ast.Mult:
            return left * right
        if op is ast.Div:
            if right == 0:
                raise ExpressionError("division by zero")
            return left / right
        if op is ast.Pow:
            return _safe_power(left, right)
        raise ExpressionError(f"operator {op.__name__} is not allowed; use + - * / **")

    def _Call(self, node: ast.Call, depth: int) -> sympy.Expr:
        if not isinstance(node.func, ast.Name):
            raise ExpressionError(f"only named functions may be called; found {_describe(node.func)}")
        name = node.func.id
        if node.keywords:
            raise ExpressionError(f"keyword arguments are not allowed in {name}(...)")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise ExpressionError(f"starred arguments are not allowed in {name}(...)")
        if name in VECTOR_REDUCTIONS:
            return self._reduction(name, node.args, depth)
        if name in self.scope.calls:
            return self.scope.calls[name](*[self.build(a, depth) for a in node.args])
        if name not in SCALAR_FUNCTIONS:
            known = sorted(SCALAR_FUNCTIONS) + list(VECTOR_REDUCTIONS) + list(self.scope.calls)
            raise ExpressionError(f"unknown function {name!r}; must be one of {', '.join(known)}")
        function = SCALAR_FUNCTIONS[name]
        arity = 2 if name in BINARY_FUNCTIONS else 1
        if len(node.args) != arity:
            raise ExpressionError(f"{name}() takes {arity} argument(s); found {len(node.args)}")
        return function(*[self.build(a, depth) for a in node.args])

    def _reduction(self, name: str, args: list[ast.AST], depth: int) -> sympy.Expr:
        if not self.scope.vector_name:
            raise ExpressionError(f"{name}() needs a spatial vector variable")
        if len(args) != 1:
            raise ExpressionError(f"{name}() takes 1 argument; found {len(args)}")
        if self.in_reduction is not None:
            raise ExpressionError(f"{name}() cannot be nested inside another reduction")
        placeholder = sympy.Dummy("component")
        self.in_reduction = placeholder
        try:
            body = self.build(args[0], depth)
        finally:
            self.in_reduction = None
        terms = [body.xreplace({placeholder: xi}) for xi in self.scope.vector]
        if name == "sum":
            return sympy.Add(*terms)
        if name == "mean":
            return sympy.Add(*terms) / len(terms)
        if name == "prod":
            return sympy.Mul(*terms)
        if name == "norm1":
            return sympy.Add(*[sympy.Abs(term) for term in terms])
        squares = sympy.Add(*[term**2 for term in terms])
        return squares if name == "norm2sq" else sympy.sqrt(squares)


def _safe_power(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """base ** exponent, refusing constants that would be astronomically large."""
    if exponent.is_Number and abs(float(exponent)) > 1000:
        raise ExpressionError(f"exponent {exponent} is too large (limit 1000)")
    if base.is_Number and exponent.is_Number and base != 0:
        magnitude = float(exponent) * math.log10(abs(float(base)))
        if magnitude > MAX_LOG10:
            raise ExpressionError(f"{base}**{exponent} is too large")
    return base**exponent


def _describe(node: ast.AST) -> str:
    names = {"Attribute": "attribute access", "Subscript": "subscripting", "Lambda": "lambda",
             "Compare": "comparison", "BoolOp": "and/or", "IfExp": "if-else", "JoinedStr": "an f-string",
             "List": "a list", "Tuple": "a tuple", "Dict": "a dict", "Set": "a set",
             "ListComp": "a comprehension", "GeneratorExp": "a generator", "NamedExpr": "assignment",
             "Await": "await", "Starred": "starred expression", "Slice": "a slice"}
    return names.get(type(node).__name__, type(node).__name__)


# ---------------------------------------------------------------- compilation

Compiled = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]

_TORCH_FUNCTIONS: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    sympy.sin: torch.sin, sympy.cos: torch.cos, sympy.tan: torch.tan, sympy.exp: torch.exp,
    sympy.log: torch.log, sympy.tanh: torch.tanh, sympy.sinh: torch.sinh, sympy.cosh: torch.cosh,
    sympy.asin: torch.asin, sympy.acos: torch.acos, sympy.atan: torch.atan, sympy.Abs: torch.abs,
    sympy.sign: torch.sign, sympy.erf: torch.special.erf, sympy.erfc: torch.special.erfc,
}


def compile_torch(expression: sympy.Expr, names: Mapping[sympy.Symbol, str]) -> Compiled:
    """Compile a sympy expression to ``fn(values) -> Tensor``.

    ``names`` maps each free symbol to the key under which ``values`` holds its
    tensor. The tensors broadcast together (e.g. point coordinates (B,) with
    network values (E, B) for E parameter vectors); the result has their shape.
    """
    missing = expression.free_symbols - set(names)
    if missing:
        raise ExpressionError(f"undeclared symbol(s) {', '.join(sorted(map(str, missing)))}")
    node = _compile(expression, names)

    def evaluate(values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        reference = next(iter(values.values()))
        result = node(values)
        if not isinstance(result, torch.Tensor) or result.shape != reference.shape:
            shape = torch.broadcast_shapes(*(value.shape for value in values.values()))
            if not isinstance(result, torch.Tensor) or result.shape != shape:
                result = torch.as_tensor(result, dtype=reference.dtype, device=reference.device).expand(shape)
        return result

    return evaluate


def _compile(expr: sympy.Basic, names: Mapping[sympy.Symbol, str]):
    if expr.is_Symbol:
        key = names[expr]
        return lambda v: v[key]
    if expr.is_number:  # numbers, pi, e and closed constant forms like sqrt(2)
        constant = _real_constant(expr)
        return lambda v: constant
    args = [_compile(a, names) for a in expr.args]
    if expr.is_Add:
        return lambda v: _fold(args, v, lambda a, b: a + b)
    if expr.is_Mul:
        return lambda v: _fold(args, v, lambda a, b: a * b)
    if expr.is_Pow:
        base, exponent = args
        if expr.exp == sympy.Rational(1, 2):
            return lambda v: torch.sqrt(_tensor(base(v), v))
        if expr.exp == -1:
            return lambda v: 1.0 / base(v)
        if expr.exp.is_Integer:
            power = int(expr.exp)
            return lambda v: base(v) ** power
        return lambda v: _tensor(base(v), v) ** exponent(v)
    if isinstance(expr, (sympy.Max, sympy.Min)):
        combine = torch.maximum if isinstance(expr, sympy.Max) else torch.minimum
        return lambda v: _fold(args, v, lambda a, b: combine(_tensor(a, v), _tensor(b, v)))
    if isinstance(expr, sympy.atan2):
        y, x = args
        return lambda v: torch.atan2(_tensor(y(v), v), _tensor(x(v), v))
    function = _TORCH_FUNCTIONS.get(type(expr))
    if function is None:
        raise ExpressionError(f"cannot compile {type(expr).__name__} to torch")
    (argument,) = args
    return lambda v: function(_tensor(argument(v), v))


def _real_constant(expr: sympy.Basic) -> float:
    """float(expr), or ExpressionError when it is not a finite real number
    (log(0) = zoo, sqrt(-1) = I, acos(2), exp(1000), exp(exp(exp(exp(10)))))."""
    try:
        constant = float(expr)
    except (TypeError, ValueError, ArithmeticError, RecursionError):
        constant = math.nan
    if not math.isfinite(constant):
        text = str(expr)
        text = text if len(text) <= 60 else text[:57] + "..."
        raise ExpressionError(f"the constant {text} is not a finite real number")
    return constant


def _tensor(value, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    reference = next(iter(values.values()))
    return torch.full_like(reference, value)


def _fold(parts, values, combine):
    result = parts[0](values)
    for part in parts[1:]:
        result = combine(result, part(values))
    return result
