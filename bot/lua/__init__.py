"""The project's Lua scripts: one ``<name>.lua`` file beside this module each, loaded by name.

A line ``--!include <other>`` in a script is replaced by the text of ``<other>.lua`` (shared
helpers such as the ledger's), so every script Redis runs is one self-contained source.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.cluster import ClusterPipeline
from redis.commands.core import Script

_INCLUDE = re.compile(r"^--!include (\S+)\s*$", re.MULTILINE)


@functools.cache
def source(name: str) -> str:
    """The full text of the script ``name`` (includes expanded); FileNotFoundError for an unknown name."""
    raw = resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda match: source(match.group(1)), raw)


def script(client: Any, name: str) -> Script:
    """``name`` registered on ``client`` (a Redis client or a pipeline): call it with keys and args.
    It runs by EVALSHA and loads itself on NOSCRIPT (a Redis restarted without its scripts)."""
    return client.register_script(source(name))


def call(client: Any, registered: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Run (or, on a pipeline, queue) a registered script on ``client``. A Redis Cluster pipeline
    refuses EVALSHA (it cannot load a missing script mid-pipeline): there it goes as EVAL, source
    and all, routed by its first key."""
    if isinstance(client, ClusterPipeline):
        return client.execute_command("EVAL", registered.script, len(keys), *keys, *args)
    return registered(keys=list(keys), args=list(args), client=client)


def run(client: redis.Redis, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Run the script ``name`` once with ``keys`` and ``args``."""
    return script(client, name)(keys=list(keys), args=list(args))
