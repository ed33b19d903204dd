"""The MQTT side of PERF §4: our embedded broker (JWT at CONNECT, topic ACL, indexed subscriptions) beside
bare amqtt's `Broker` (bench/_mqtt_baseline.py: uvloop, quiet logging, anonymous) and beside Mosquitto on
127.0.0.1:1883, every figure a ratio of runs alternated in this one run (medians, PERF §6). The four parts,
on one platform and one set of devices; each is also a benchmark of its own:

1. connect   CONNECT+DISCONNECT/s with a fresh and with a cached JWT, and sustained   python -m bench.connect
2. flow      messages/s publisher → subscriber, QoS 0 and 1, losses, under churn      python -m bench.throughput
3. idle      delivery cost with 1,000 idle subscriptions                              python -m bench.subscriptions
4. commands  HTTP command round trip at 1 and 50 concurrent, and its parts alone      python -m bench.commands

Everything listens on 127.0.0.1 only, counts and times are bounded (rounds are dropped rather than overrun the
budget), and whatever this starts is stopped on the way out. Warnings and errors in the servers' logs are
summarised at the end.

Run from the repository root:  .venv/bin/python -m bench.mqtt [--quick] [--backend sqlite|postgres] [--only PART]"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # As a script, bench/ would come first on sys.path and bench/http.py would shadow the standard library.
    sys.exit("run me as a module from the repository root: python -m bench.mqtt")

from bench import commands, connect, subscriptions, throughput
from bench._rig import main

PARTS = [connect.PART, throughput.PART, subscriptions.PART, commands.PART]

if __name__ == "__main__":
    main(PARTS, "bench.mqtt", __doc__)
