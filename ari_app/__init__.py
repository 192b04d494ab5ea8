"""The Asterisk side of callassist: an ARI application that taps each call's legs
(snoop spy=in + externalMedia RTP), feeds the speech pipeline and records the call.

    from ari_app import AriApp          # ari_app.app
    from ari_app import AriClient       # ari_app.client

Names are loaded on first use so that `import ari_app.rtp` stays light.
"""
from __future__ import annotations

from typing import Any

__all__ = ["AriApp", "AriClient", "AriError", "AriNotFound", "AriDisconnected"]


def __getattr__(name: str) -> Any:
    if name == "AriApp":
        from ari_app.app import AriApp
        return AriApp
    if name in ("AriClient", "AriError", "AriNotFound", "AriDisconnected"):
        from ari_app import client
        return getattr(client, name)
    raise AttributeError(f"module 'ari_app' has no attribute {name!r}")
