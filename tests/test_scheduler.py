"""The fair queue on its own: round-robin order, backpressure, cancellation, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import Busy, ShuttingDown
from core.scheduler import FairScheduler


async def test_round_robin_across_users_one_running_per_user():
    scheduler = FairScheduler(max_waiting=20, concurrency=1)
    order: list[str] = []
    gate = asyncio.Event()

    async def work(user: str, label: str) -> None:
        async with scheduler.turn(user):
            order.append(label)
            await gate.wait()

    # "a" bursts four requests before "b" and "c" send one each.
    tasks = [asyncio.create_task(work("a", f"a{i}")) for i in range(4)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(work("b", "b0")), asyncio.create_task(work("c", "c0"))]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*tasks)
    assert order == ["a0", "b0", "c0", "a1", "a2", "a3"]


async def test_positions_follow_serving_order():
    scheduler = FairScheduler(max_waiting=10)
    running = scheduler.enqueue("a")
    a2, a3, b1 = scheduler.enqueue("a"), scheduler.enqueue("a"), scheduler.enqueue("b")
    assert scheduler.position(running) == 0
    # "a" was just served, so "b" goes next even though a2 arrived first.
    assert [scheduler.position(t) for t in (b1, a2, a3)] == [1, 2, 3]
    scheduler.release(a2)  # a2's requester went away
    assert scheduler.position(b1) == 1 and scheduler.position(a3) == 2


async def test_full_queue_refuses_with_busy():
    scheduler = FairScheduler(max_waiting=2)
    scheduler.enqueue("a")  # runs at once
    scheduler.enqueue("b")
    scheduler.enqueue("c")
    with pytest.raises(Busy) as caught:
        scheduler.enqueue("d")
    assert "busy" in caught.value.user_message.lower()


async def test_cancelled_waiter_leaves_queue_and_next_runs():
    scheduler = FairScheduler(max_waiting=5)
    release_first = asyncio.Event()
    started: list[str] = []

    async def work(user: str) -> None:
        async with scheduler.turn(user):
            started.append(user)
            if user == "a":
                await release_first.wait()

    first = asyncio.create_task(work("a"))
    waiting = asyncio.create_task(work("b"))
    last = asyncio.create_task(work("c"))
    await asyncio.sleep(0.01)
    assert scheduler.waiting == 2
    waiting.cancel()
    await asyncio.sleep(0.01)
    assert scheduler.waiting == 1
    release_first.set()
    await asyncio.gather(first, last)
    assert started == ["a", "c"]
    assert scheduler.running == 0 and scheduler.waiting == 0


async def test_close_fails_waiters_and_refuses_new():
    scheduler = FairScheduler(max_waiting=5)
    scheduler.enqueue("a")
    waiter = scheduler.enqueue("b")
    scheduler.close()
    with pytest.raises(ShuttingDown):
        await waiter.ready
    with pytest.raises(ShuttingDown):
        scheduler.enqueue("c")


async def test_a_waiting_question_keeps_its_place_while_new_users_arrive():
    """Within a round, first come first served: a user who was answered before and asks again is
    not pushed back by users arriving after them (the place told at admission holds)."""
    scheduler = FairScheduler(max_waiting=10, concurrency=1)
    first = scheduler.enqueue("a")
    scheduler.release(first)  # a was answered once
    blocker = scheduler.enqueue("x")  # runs
    again = scheduler.enqueue("a")
    assert scheduler.position(again) == 1
    later = [scheduler.enqueue(user) for user in ("b", "c", "d")]
    assert scheduler.position(again) == 1
    assert [scheduler.position(t) for t in later] == [2, 3, 4]
    scheduler.release(blocker)
    assert scheduler.position(again) == 0  # it runs next
