"""Name -> object registries with one "must be one of" error (torchdiffeq's SOLVERS)."""

from __future__ import annotations

from typing import Generic, TypeVar

from pinnzo.errors import PinnzoError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from user-facing names to implementations.

    ``kind`` is what the names are ("backend", "optimizer", "quadrature family"),
    used in the single error message for an unknown name.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None):
        """Register ``item`` under ``name``; usable as a decorator when item is None."""
        if item is None:
            def decorate(obj: T) -> T:
                self.register(name, obj)
                return obj
            return decorate
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise PinnzoError(
                f"unknown {self.kind} {name!r}; must be one of {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._items)
