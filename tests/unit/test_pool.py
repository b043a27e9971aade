"""The warm pool's bookkeeping (engine/pool.py) with fake items: each item is handed
out once, the pool follows demand within its bounds, dead items are never handed out,
evicted shapes and close() destroy what they held."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Hashable

from crucible.engine.pool import WarmPool


class Items:
    def __init__(self) -> None:
        self.made: list[str] = []
        self.discarded: list[str] = []
        self.dead: set[str] = set()
        self._n = itertools.count()

    async def make(self, shape: Hashable) -> str:
        await asyncio.sleep(0)
        item = f"{shape}-{next(self._n)}"
        self.made.append(item)
        return item

    async def discard(self, item: str) -> None:
        self.discarded.append(item)

    def pool(self, size: int = 2, shapes: int = 2) -> WarmPool[str]:
        return WarmPool(
            size=size,
            shapes=shapes,
            make=self.make,
            discard=self.discard,
            usable=lambda item: item not in self.dead,
        )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_each_item_is_handed_out_once_and_replaced() -> None:
    items = Items()
    pool = items.pool(size=2)
    assert pool.take("a") is None  # cold: a miss asks for one
    await settle()
    first = pool.take("a")
    await settle()
    second = pool.take("a")
    assert first is not None and second is not None and first != second
    assert (pool.hits, pool.misses) == (2, 1)
    await pool.close()


async def test_a_take_without_refill_leaves_the_replacement_to_the_caller() -> None:
    items = Items()
    pool = items.pool(size=2)
    pool.fill("a", 1)
    await settle()
    assert pool.take("a", refill=False) is not None
    await settle()
    assert pool.idle() == {"a": []} and not pool.busy  # nothing asked for yet
    pool.fill("a", 1)  # the caller's, once its run is done
    await settle()
    assert len(pool.idle()["a"]) == 1
    await pool.close()


async def test_the_pool_never_holds_more_than_its_size() -> None:
    items = Items()
    pool = items.pool(size=3)
    pool.fill("a", 10)
    for _ in range(5):
        pool.take("b")
    await settle()
    assert len(pool.idle()["a"]) == 3
    assert len(pool.idle()["b"]) == 3
    await pool.close()


async def test_a_dead_item_is_discarded_not_handed_out() -> None:
    items = Items()
    pool = items.pool(size=1)
    pool.fill("a", 1)
    await settle()
    (dead,) = pool.idle()["a"]
    items.dead.add(dead)
    assert pool.take("a") is None
    await settle()
    assert dead in items.discarded


async def test_a_new_shape_evicts_the_least_recently_used() -> None:
    items = Items()
    pool = items.pool(size=1, shapes=2)
    for shape in ("a", "b"):
        pool.fill(shape, 1)
    await settle()
    (held_a,) = pool.idle()["a"]
    pool.take("b")
    pool.take("c")  # a is the least recently used now
    await settle()
    assert "a" not in pool.idle() and held_a in items.discarded
    await pool.close()


async def test_close_destroys_idle_items_and_stops_refills() -> None:
    items = Items()
    pool = items.pool(size=2)
    pool.fill("a", 2)
    await pool.close()
    assert sorted(items.discarded) == sorted(items.made) and len(items.made) == 2
    assert pool.take("a") is None
    await settle()
    assert len(items.made) == 2
