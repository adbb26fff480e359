"""Farm managers by URL: `--farm afanasy://HOST:PORT` names the one corral reads and syncs from.

A registry, so a new farm manager is one entry here and an adapter package, not a change
to the daemon or the CLI.  Without `--farm`, corral's own store is the farm (fed by
`corral ingest` or the Python API).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from corral.ports import FarmReader


class BadFarmUrl(ValueError):
    """A --farm URL corral cannot use; the message says what to write."""


def _afanasy(host: str, port: int) -> FarmReader:
    from corral.afanasy.source import AfanasyReader

    return AfanasyReader(f"{host}:{port}")


#: scheme -> (default port, factory(host, port)).
READERS: dict[str, tuple[int, Callable[[str, int], FarmReader]]] = {
    "afanasy": (51000, _afanasy),
}


def open_farm(url: str) -> FarmReader:
    """The reader for `url` (afanasy://HOST[:PORT])."""
    parts = urlsplit(url)
    if parts.scheme not in READERS or not parts.hostname:
        known = ", ".join(f"{s}://HOST[:{p}]" for s, (p, _f) in READERS.items())
        raise BadFarmUrl(f"--farm '{url}': write {known}")
    default, factory = READERS[parts.scheme]
    try:
        port = parts.port or default
    except ValueError:
        raise BadFarmUrl(f"--farm '{url}': the port must be a number from 1 to 65535") from None
    return factory(parts.hostname, port)
