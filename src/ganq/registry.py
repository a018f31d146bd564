"""One registry helper for every name -> object table (methods, formats, data sets, architectures)."""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from ganq.errors import GanqError

T = TypeVar("T")


class Registry(Generic[T]):
    """A checked name -> object table: registering a name twice is a programming error, asking for an unknown
    name is a user error (GanqError naming the valid choices)."""

    def __init__(self, kind: str, hint: str = ""):
        self.kind, self.hint, self._items = kind, hint, {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def __call__(self, name: str):
        """Decorator form: @REGISTRY("name") registers the decorated object."""
        return lambda item: self.register(name, item)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise GanqError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._items)}{self.hint}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def items(self):
        return self._items.items()

    def __contains__(self, name) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
