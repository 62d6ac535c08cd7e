"""Per-tenant turns: a tenant's extra holders wait, other tenants do not, a wait is bounded."""

import asyncio

import pytest

from app.core.ratelimit import NoTurn, TenantTurns
from tests.aio import run_coroutine


def test_a_tenants_extra_holders_wait_while_another_tenant_goes_on() -> None:
    turns = TenantTurns(limit=2, wait_s=5)
    order: list[str] = []

    async def hold(tenant: str, name: str, release: asyncio.Event) -> None:
        async with turns.turn(tenant):
            order.append(name)
            await release.wait()

    async def scenario() -> list[str]:
        release_a = asyncio.Event()
        a = [asyncio.create_task(hold("a", f"a{i}", release_a)) for i in range(4)]
        await asyncio.sleep(0.05)
        await asyncio.wait_for(hold("b", "b0", _set()), 1)
        assert order == ["a0", "a1", "b0"]  # a2 and a3 wait for a turn
        release_a.set()
        await asyncio.gather(*a)
        return order

    assert run_coroutine(scenario()) == ["a0", "a1", "b0", "a2", "a3"]
    assert not turns._turns  # idle tenants are forgotten


def _set() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


def test_a_wait_past_the_bound_gets_no_turn_and_frees_its_place() -> None:
    turns = TenantTurns(limit=1, wait_s=0.1)

    async def scenario() -> None:
        release = asyncio.Event()

        async def hold() -> None:
            async with turns.turn("a"):
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        with pytest.raises(NoTurn):
            async with turns.turn("a"):
                pass
        release.set()
        await holder
        async with turns.turn("a"):  # the refused waiter left no permit behind
            pass

    run_coroutine(scenario())
    assert not turns._turns
