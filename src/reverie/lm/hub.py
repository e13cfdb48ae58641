"""The Hugging Face hub on machines that cannot reach it: find out at once, then read the local cache only.

Without network, huggingface_hub retries each request with back-off before it falls back to its cache
(a warning per retry): a model already in the cache took minutes to load that way, and one that is
not there failed only after the retries. Loads of hub ids (models, SAELens releases) ask `offline()`
first and, where it says so, run `cache_only()`: no request is made, a cached model loads at once and
a missing one fails at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

TIMEOUT = 5.0  # seconds the hub's endpoint gets to answer


def offline() -> str | None:
    """Why loads should read the local cache only, or None: the hub is switched off (HF_HUB_OFFLINE, read
    here too: the hub library reads it once, when first imported), or its endpoint does not answer within
    `TIMEOUT` seconds."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    if constants.is_offline_mode():
        return "the hub's offline mode is on"
    try:
        get_session().head(constants.ENDPOINT, timeout=TIMEOUT)
        return None
    except Exception:  # no network, no DNS, a proxy error: offline as far as we can tell
        return f"{constants.ENDPOINT} cannot be reached"


@contextlib.contextmanager
def cache_only(on: bool | str | None = True) -> Iterator[None]:
    """With `on`, the hub library's offline mode (the local cache only, no request) for the body; the
    previous mode is restored afterwards."""
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = was or bool(on)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def cache_folder() -> str:
    """Where the hub library keeps downloaded repos."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE
