"""Benchmark helper: the baseline of PERF §4, amqtt's own `Broker` run the way we embed ours (uvloop,
quiet logging), anonymous, with no plugin but amqtt's AnonymousAuthPlugin: without any plugin amqtt
refuses every CONNECT ("no plugin responded with a boolean").

    python -m bench._mqtt_baseline --port 18831

Listens on 127.0.0.1 only, prints READY once it accepts connections, stops on SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any


def broker_config(port: int) -> dict[str, Any]:
    # amqtt 0.12.1 (amqtt/contexts.py BrokerConfig): `plugins` maps a plugin's dotted class path to its
    # options; an explicit dict replaces the defaults (event/packet loggers, $SYS), leaving only this one.
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(port: int) -> None:
    from amqtt.broker import Broker

    broker = Broker(broker_config(port))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("READY", flush=True)
    await stop.wait()
    await asyncio.wait_for(broker.shutdown(), timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # Quiet like the platform's `serve` (root at WARNING): amqtt logs every connection at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import uvloop

    try:
        uvloop.run(serve(args.port))
    except TimeoutError:
        sys.exit("amqtt did not shut down within 10 s")


if __name__ == "__main__":
    main()
