"""One page of a list, as every list endpoint returns it.

Each endpoint keeps a named subclass (``EvaluationList(Page[EvaluationPublic])``):
a parametrised ``Page[X]`` would be named ``Page_X_`` in the OpenAPI document, and
the document (and the clients generated from it) must not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Self, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


@dataclass(frozen=True)
class PageRequest:
    """Which page: ``cursor`` is the previous page's ``next_cursor`` (None: the first)."""

    cursor: int | None
    limit: int


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")

    @classmethod
    def of(cls, items: list[T], next_cursor: int | None) -> Self:
        """From a store's ``(rows mapped to items, next cursor or None)``."""
        return cls(items=items, next_cursor=None if next_cursor is None else str(next_cursor))
