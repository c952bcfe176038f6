"""Admission control on its own: slots, the waiting queue, fail-fast rejection, cancellation and draining."""

from __future__ import annotations

import asyncio

import pytest

from chatgen.chat.admission import Admission, AdmissionLimits
from chatgen.errors import ApiError, Failure


async def hold(admission: Admission, n: int, release: asyncio.Event, entered: list[int], tag: int) -> None:
    async with admission.slots(n):
        entered.append(tag)
        await release.wait()


async def test_runs_waits_then_rejects_with_retry_after() -> None:
    rejected: list[int] = []
    admission = Admission(AdmissionLimits(max_running=2, max_waiting=2), on_reject=lambda: rejected.append(1))
    release = asyncio.Event()
    entered: list[int] = []
    tasks = [asyncio.ensure_future(hold(admission, 1, release, entered, i)) for i in range(4)]
    await asyncio.sleep(0)
    assert entered == [0, 1]
    assert (admission.running, admission.waiting) == (2, 2)

    with pytest.raises(ApiError) as info:
        async with admission.slots(1):
            pass
    assert info.value.failure is Failure.OVERLOADED
    assert info.value.retry_after == 1
    assert rejected == [1]

    release.set()
    await asyncio.gather(*tasks)
    # Waiters were admitted in arrival order once slots freed up.
    assert entered == [0, 1, 2, 3]
    assert (admission.running, admission.waiting) == (0, 0)
    await asyncio.wait_for(admission.idle(), 1)


async def test_a_cancelled_waiter_never_runs_and_frees_its_place() -> None:
    admission = Admission(AdmissionLimits(max_running=1, max_waiting=1))
    release = asyncio.Event()
    entered: list[int] = []
    first = asyncio.ensure_future(hold(admission, 1, release, entered, 0))
    waiter = asyncio.ensure_future(hold(admission, 1, release, entered, 1))
    await asyncio.sleep(0)
    assert admission.waiting == 1

    waiter.cancel()  # the caller went away (or its deadline passed) while queued
    await asyncio.gather(waiter, return_exceptions=True)
    assert admission.waiting == 0
    third = asyncio.ensure_future(hold(admission, 1, release, entered, 2))
    await asyncio.sleep(0)
    assert admission.waiting == 1  # the place the cancelled waiter held is free again

    release.set()
    await asyncio.gather(first, third)
    assert entered == [0, 2]
    assert admission.running == 0


async def test_a_choice_group_takes_n_slots_and_n_beyond_capacity_is_a_bug() -> None:
    admission = Admission(AdmissionLimits(max_running=4, max_waiting=0))
    async with admission.slots(3):
        assert admission.running == 3
        with pytest.raises(ApiError) as info:
            async with admission.slots(2):
                pass
        assert info.value.failure is Failure.OVERLOADED
    # Validation keeps n within max_running (chatgen.chat.validation: ServedModel.max_choices).
    with pytest.raises(ValueError):
        async with admission.slots(5):
            pass


async def test_draining_refuses_new_requests_and_lets_admitted_ones_finish() -> None:
    admission = Admission(AdmissionLimits(max_running=1, max_waiting=1))
    release = asyncio.Event()
    entered: list[int] = []
    running = asyncio.ensure_future(hold(admission, 1, release, entered, 0))
    queued = asyncio.ensure_future(hold(admission, 1, release, entered, 1))
    await asyncio.sleep(0)

    admission.drain("shutting down")
    with pytest.raises(ApiError) as info:
        async with admission.slots(1):
            pass
    assert info.value.failure is Failure.SHUTTING_DOWN
    idle = asyncio.ensure_future(admission.idle())
    await asyncio.sleep(0.01)
    assert not idle.done()

    release.set()
    await asyncio.gather(running, queued)
    await asyncio.wait_for(idle, 1)
    assert entered == [0, 1]


async def test_a_waiter_cancelled_just_before_slots_free_up_is_not_granted() -> None:
    """Found by the metrics test: the waiter's task is cancelled, and slots are released before it runs again.
    Its entry must leave the queue without being granted (nor raise), and the counts must come back to zero."""
    admission = Admission(AdmissionLimits(max_running=2, max_waiting=2))
    async with admission.slots(2):
        waiter = asyncio.ensure_future(admission.slots(1).__aenter__())
        await asyncio.sleep(0)
        assert admission.waiting == 1
        waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (admission.running, admission.waiting) == (0, 0)
    async with admission.slots(2):  # every slot is free again
        assert admission.running == 2


async def test_stop_fails_every_waiter_with_its_error_and_refuses_new_ones() -> None:
    admission = Admission(AdmissionLimits(max_running=1, max_waiting=2))
    release = asyncio.Event()
    entered: list[int] = []
    running = asyncio.ensure_future(hold(admission, 1, release, entered, 0))
    waiters = [asyncio.ensure_future(hold(admission, 1, release, entered, i)) for i in (1, 2)]
    await asyncio.sleep(0)
    assert (admission.running, admission.waiting) == (1, 2)

    admission.stop(ApiError(Failure.SHUTTING_DOWN, "grace period over"))
    for waiter in waiters:
        with pytest.raises(ApiError, match="grace period over"):
            await waiter
    assert (admission.running, admission.waiting) == (1, 0)
    with pytest.raises(ApiError) as info:
        async with admission.slots(1):
            pass
    assert info.value.failure is Failure.SHUTTING_DOWN
    release.set()
    await running
    await asyncio.wait_for(admission.idle(), 1)
    assert entered == [0]  # no waiter ever ran


async def test_waiters_are_admitted_by_priority_then_arrival() -> None:
    admission = Admission(AdmissionLimits(max_running=1, max_waiting=8))
    entered: list[str] = []
    gates = {tag: asyncio.Event() for tag in ("first", "low", "high", "low-2", "high-2", "cancelled")}

    async def run(tag: str, priority: int) -> None:
        async with admission.slots(1, priority):
            entered.append(tag)
            await gates[tag].wait()

    tasks = {"first": asyncio.ensure_future(run("first", 0))}
    await asyncio.sleep(0)
    for tag, priority in (("low", 5), ("high", -3), ("cancelled", -10), ("low-2", 5), ("high-2", -3)):
        tasks[tag] = asyncio.ensure_future(run(tag, priority))
        await asyncio.sleep(0)
    assert (entered, admission.waiting) == (["first"], 5)
    # The most urgent waiter gives up: it leaves the queue, and the order of the rest holds.
    tasks["cancelled"].cancel()
    await asyncio.sleep(0)
    assert admission.waiting == 4
    for tag in ("first", "high", "high-2", "low", "low-2"):
        gates[tag].set()
        await asyncio.sleep(0.01)
    await asyncio.gather(*(t for tag, t in tasks.items() if tag != "cancelled"))
    assert entered == ["first", "high", "high-2", "low", "low-2"]
    assert (admission.running, admission.waiting) == (0, 0)
