"""Subscriptions indexed by topic, so that finding a message's subscribers costs the same however many
unrelated subscriptions exist (stock amqtt scans them all, and loses messages when the dict it scans
changes under it: PERF §5). Exact filters are a dict lookup; wildcard filters are grouped by their
first two levels (`devices/{uid}/#` under ("devices", uid)), and only the few in the message's group
are matched. A match returns a copy, so delivery never iterates a structure that can change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Subscriber = tuple[Any, int]  # (amqtt Session, granted QoS)
_GLOBAL = ("", "")


def _has_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


def _group(topic_filter: str) -> tuple[str, str]:
    levels = topic_filter.split("/", 2)
    if len(levels) >= 2 and not _has_wildcard(levels[0]) and not _has_wildcard(levels[1]):
        return levels[0], levels[1]
    return _GLOBAL


def matches(topic: str, topic_filter: str) -> bool:
    if topic.startswith("$") and topic_filter.startswith(("+", "#")):
        return False  # MQTT-4.7.2-1
    if not _has_wildcard(topic_filter):
        return topic == topic_filter
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for i, level in enumerate(filter_levels):
        if level == "#":
            return True
        if i >= len(topic_levels) or (level != "+" and level != topic_levels[i]):
            return False
    return len(filter_levels) == len(topic_levels)


class SubscriptionIndex:
    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Subscriber]] = {}
        self._wild: dict[tuple[str, str], dict[str, dict[str, Subscriber]]] = {}
        self._by_client: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return sum(len(filters) for filters in self._by_client.values())

    def add(self, topic_filter: str, client_id: str, session: Any, qos: int) -> None:
        if _has_wildcard(topic_filter):
            bucket = self._wild.setdefault(_group(topic_filter), {}).setdefault(topic_filter, {})
        else:
            bucket = self._exact.setdefault(topic_filter, {})
        bucket[client_id] = (session, qos)
        self._by_client.setdefault(client_id, set()).add(topic_filter)

    def remove(self, topic_filter: str, client_id: str) -> bool:
        if _has_wildcard(topic_filter):
            group = self._wild.get(_group(topic_filter), {})
            bucket = group.get(topic_filter)
            found = bucket is not None and bucket.pop(client_id, None) is not None
            if bucket is not None and not bucket:
                del group[topic_filter]
                if not group:
                    self._wild.pop(_group(topic_filter), None)
        else:
            bucket = self._exact.get(topic_filter)
            found = bucket is not None and bucket.pop(client_id, None) is not None
            if bucket is not None and not bucket:
                del self._exact[topic_filter]
        filters = self._by_client.get(client_id)
        if filters is not None:
            filters.discard(topic_filter)
            if not filters:
                del self._by_client[client_id]
        return found

    def remove_client(self, client_id: str) -> None:
        for topic_filter in list(self._by_client.get(client_id, ())):
            self.remove(topic_filter, client_id)

    def filters_of(self, client_id: str) -> list[str]:
        return sorted(self._by_client.get(client_id, ()))

    def granted_of(self, client_id: str) -> dict[str, int]:
        """A client's filters and the QoS granted for each."""
        found = {}
        for topic_filter in self._by_client.get(client_id, ()):
            if _has_wildcard(topic_filter):
                bucket = self._wild.get(_group(topic_filter), {}).get(topic_filter, {})
            else:
                bucket = self._exact.get(topic_filter, {})
            if client_id in bucket:
                found[topic_filter] = bucket[client_id][1]
        return found

    def match(self, topic: str) -> list[Subscriber]:
        """Every (session, qos) whose filter matches `topic`, once per client (the highest QoS wins)."""
        found: dict[str, Subscriber] = dict(self._exact.get(topic, {}))
        levels = topic.split("/", 2)
        groups = [_GLOBAL]
        if len(levels) >= 2:
            groups.append((levels[0], levels[1]))
        for group in groups:
            for topic_filter, bucket in self._wild.get(group, {}).items():
                if matches(topic, topic_filter):
                    for client_id, (session, qos) in bucket.items():
                        if client_id not in found or found[client_id][1] < qos:
                            found[client_id] = (session, qos)
        return list(found.values())

    def items(self) -> Iterator[tuple[str, list[Subscriber]]]:
        for topic_filter, bucket in self._exact.items():
            yield topic_filter, list(bucket.values())
        for group in self._wild.values():
            for topic_filter, bucket in group.items():
                yield topic_filter, list(bucket.values())
