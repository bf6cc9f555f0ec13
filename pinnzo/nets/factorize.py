"""Balanced factorisations of layer sizes for TT-matrix layers."""

from __future__ import annotations

import math


def prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors + ([n] if n > 1 else [])


def balanced_factors(n: int, count: int) -> tuple[int, ...]:
    """``count`` factors whose product is n, as equal as the primes allow (descending).

    Greedy: the largest prime goes to the currently smallest factor.
    Examples: 512 -> (8, 4, 4, 4), 1024 -> (8, 8, 4, 4), 21 -> (7, 3, 1, 1).
    """
    if n < 1 or count < 1:
        raise ValueError("n and count must be positive")
    factors = [1] * count
    for p in sorted(prime_factors(n), reverse=True):
        factors[factors.index(min(factors))] *= p
    return tuple(sorted(factors, reverse=True))


def padded_factors(n: int, count: int) -> tuple[int, ...]:
    """Balanced factors of n; a prime n > 3 is padded to n + 1 first.

    A prime factors as (n, 1, ..., 1), which a TT layer cannot compress; the
    layer then pads the size (extra inputs are zero, extra outputs dropped).
    Examples: 21 -> (7, 3, 1, 1), 10 -> (5, 2, 1, 1), 11 -> 12 -> (3, 2, 2, 1).
    """
    if count > 1 and n > 3 and prime_factors(n) == [n]:
        n += 1
    return balanced_factors(n, count)


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x1x3x7' -> (1, 1, 3, 7)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected a shape like 8x4x4x4; found {text!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"expected positive factors; found {text!r}")
    return shape


def size(shape) -> int:
    return math.prod(shape)
