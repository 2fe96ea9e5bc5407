"""A registry keyed by an enum: the way variants (advantage estimators, policy losses, KL estimators, loss
aggregations) are chosen by name, in the style of veRL's ``register_adv_est``.

An unknown name raises ``ValueError`` listing the valid ones, so a typo in a job spec or a CLI flag says
what to write instead.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Generic, TypeVar

K = TypeVar("K", bound=Enum)
F = TypeVar("F")


class Registry(Generic[K, F]):
    """Maps the members of one ``str`` enum to implementations."""

    def __init__(self, keys: type[K], what: str) -> None:
        self._keys = keys
        self._what = what
        self._impls: dict[K, F] = {}

    def valid_names(self) -> list[str]:
        return [str(k.value) for k in self._keys if k in self._impls]

    def key(self, name: str | K) -> K:
        """The enum member for ``name`` (a member or its value); ValueError listing valid names if unknown."""
        if isinstance(name, self._keys):
            return name
        try:
            return self._keys(name)
        except (ValueError, TypeError):
            valid = ", ".join(str(k.value) for k in self._keys)
            raise ValueError(f"unknown {self._what} {name!r}; valid: {valid}") from None

    def register(self, name: str | K) -> Callable[[F], F]:
        """Decorator registering an implementation under ``name``; registering a name twice is an error."""
        key = self.key(name)

        def decorate(impl: F) -> F:
            if key in self._impls:
                raise ValueError(f"{self._what} {key.value!r} is already registered")
            self._impls[key] = impl
            return impl

        return decorate

    def get(self, name: str | K) -> F:
        key = self.key(name)
        if key not in self._impls:
            valid = ", ".join(self.valid_names())
            raise ValueError(f"{self._what} {key.value!r} has no implementation; valid: {valid}")
        return self._impls[key]
