"""Keyset pagination, written once for every list the store serves.

A page is ordered by an integer column that only grows (``seq``), and the cursor is
that column's value on the last row of the previous page. Unlike ``OFFSET``, a page
costs the same wherever it starts, and rows inserted meanwhile neither repeat nor
shift the pages after them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Row, Select
from sqlalchemy.orm import InstrumentedAttribute, Session

R = TypeVar("R")


def keyset_page(
    session: Session,
    query: Select[R],
    key: InstrumentedAttribute[int],
    *,
    cursor: int | None,
    limit: int,
    newest_first: bool = True,
) -> tuple[list[R], int | None]:
    """The first ``limit`` rows of ``query`` past ``cursor`` in ``key`` order, and the
    cursor of the next page (``key`` of the last row kept) or None on the last page.

    ``newest_first``: descending, the cursor's page holds the rows below it; else
    ascending, the rows above it. One row more than the page is read, to know
    whether another page follows without a second query.
    """
    rows = list(session.scalars(_window(query, key, cursor, limit, newest_first)))
    return _cut(rows, key, limit)


def keyset_rows(
    session: Session,
    query: Select[Any],
    key: InstrumentedAttribute[int],
    *,
    cursor: int | None,
    limit: int,
) -> tuple[list[Row[Any]], int | None]:
    """:func:`keyset_page` (newest first) of a select of columns (``key`` among them):
    plain rows, not ORM objects, for reads that only render."""
    return _cut(list(session.execute(_window(query, key, cursor, limit, True))), key, limit)


def _window(
    query: Select[Any],
    key: InstrumentedAttribute[int],
    cursor: int | None,
    limit: int,
    newest_first: bool,
) -> Select[Any]:
    """The page's rows past ``cursor``, and one more, to know whether another follows."""
    if newest_first:
        query = query.order_by(key.desc())
        if cursor is not None:
            query = query.where(key < cursor)
    else:
        query = query.order_by(key.asc())
        if cursor is not None:
            query = query.where(key > cursor)
    return query.limit(limit + 1)


def _cut(
    rows: list[Any], key: InstrumentedAttribute[int], limit: int
) -> tuple[list[Any], int | None]:
    if len(rows) <= limit:
        return rows, None
    last: Any = rows[limit - 1]
    return rows[:limit], int(getattr(last, key.key))
