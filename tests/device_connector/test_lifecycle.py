"""The embedded broker's session life cycle (device_connector.broker.lifecycle) behaves as amqtt's
`transitions` machine does, for every sequence of triggers: same states, same refusals, same enter
callbacks (which stamp the connect and disconnect times). And a session that has ended is freed at once,
by reference counting, not left to the garbage collector."""

from __future__ import annotations

import gc
import itertools
import weakref
from collections.abc import Callable

import httpx
import pytest
from amqtt.session import Session
from transitions import MachineError

from device_connector.broker import lifecycle
from device_connector.broker.embedded import EmbeddedBroker
from shared.context import Context
from tests.conftest import Users
from tests.device_connector.helpers import (  # noqa: F401  (mqtt_fixture is the `mqtt` fixture)
    Clients,
    eventually,
    make_world,
    mqtt_fixture,
    running_connector,
)


def run(init: Callable[[Session], object], triggers: tuple[str, ...]) -> list[object]:
    session = Session.__new__(Session)
    session.last_connect_time = session.last_disconnect_time = None
    init(session)
    outcome: list[object] = []
    for trigger in triggers:
        try:
            getattr(session.transitions, trigger)()
            outcome.append(session.transitions.state)
        except MachineError:
            outcome.append("refused")
        outcome.append((session.last_connect_time is not None, session.last_disconnect_time is not None))
        outcome.append(session.transitions.is_connected())
    return outcome


@pytest.mark.parametrize(
    "triggers", [seq for n in range(1, 5) for seq in itertools.product(("connect", "disconnect"), repeat=n)]
)
def test_session_states_match_amqtts_machine(triggers: tuple[str, ...]) -> None:
    assert run(lifecycle._init_states, triggers) == run(lifecycle.AMQTT_INIT_STATES, triggers)


@pytest.mark.parametrize("ending", ["disconnect", "dropped"])
async def test_an_ended_session_is_freed_without_the_garbage_collector(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients, ending: str
) -> None:
    """A connection's session is freed as soon as nothing holds it, not at the next full collection: a
    reconnect storm's 10,000 dead sessions once waited for one, and their memory set it off mid-storm."""
    world = await make_world(client, users, ctx)
    broker = running_connector(ctx).broker
    assert isinstance(broker, EmbeddedBroker)
    first = await mqtt.connect(world.uid, world.uid, world.device_token)
    ended = weakref.ref(broker.server._sessions[world.uid][0])
    gc.disable()  # whatever frees the session now is reference counting alone
    try:
        if ending == "disconnect":
            await first.close()
        else:
            await first.drop()
        assert await eventually(lambda: not broker.server.is_connected(world.uid))
        await mqtt.connect(world.uid, world.uid, world.device_token)  # a clean start: the old session goes
        assert await eventually(lambda: ended() is None), "the ended session waits for the garbage collector"
    finally:
        gc.enable()


async def test_a_clean_session_leaves_at_its_close(
    client: httpx.AsyncClient, users: Users, ctx: Context, mqtt: Clients
) -> None:
    """A clean session is dropped when its connection closes, not at amqtt's sweep a second later (that
    sweep took a storm's thousands of ended sessions in one turn of the event loop)."""
    world = await make_world(client, users, ctx)
    broker = running_connector(ctx).broker
    assert isinstance(broker, EmbeddedBroker)
    device = await mqtt.connect(world.uid, world.uid, world.device_token)
    assert world.uid in broker.server._sessions
    await device.close()
    assert await eventually(lambda: not broker.server.is_connected(world.uid))
    assert world.uid not in broker.server._sessions
