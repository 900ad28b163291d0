"""The WebRTC configuration of the live page: which STUN/TURN servers the browser and server use.

On localhost (or a LAN) no ICE server is needed, so the default is an EMPTY list:
`{"iceServers": []}`. Note that `{}` or `{"iceServers": None}` would not do: streamlit-webrtc
treats them as unset and falls back to a public STUN server, which is slow or unreachable
offline. A remote deployment needs STUN/TURN servers, configured (first match wins) with

- the environment variable `FER_APP_ICE_SERVERS`, a JSON list, e.g.
  `[{"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "p"}]`, or
- `.streamlit/secrets.toml`:

      [rtc]
      ice_servers = [{ urls = "stun:stun.example.org:3478" }]

Each entry is an RTCIceServer dict with `urls` (a string or a list of strings) and optionally
`username` and `credential`; a bare URL string is accepted as shorthand for `{"urls": URL}`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["ENV_VAR", "RtcConfigError", "ice_servers", "rtc_configuration"]

ENV_VAR = "FER_APP_ICE_SERVERS"
SECRETS_SECTION, SECRETS_KEY = "rtc", "ice_servers"
_ICE_KEYS = frozenset({"urls", "username", "credential", "credentialType"})


class RtcConfigError(ValueError):
    """A malformed ICE server list; the message names where it came from and what is wrong."""


def rtc_configuration(*, environ: Mapping[str, str] | None = None,
                      secrets: Mapping[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """`{"iceServers": [...]}` for `webrtc_streamer(rtc_configuration=...)`; the list is empty by default.

    `environ` defaults to `os.environ`, `secrets` to Streamlit's `st.secrets` (when a secrets.toml exists).
    Raises `RtcConfigError` for a malformed list.
    """
    return {"iceServers": ice_servers(environ=environ, secrets=secrets)}


def ice_servers(*, environ: Mapping[str, str] | None = None,
                secrets: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The configured ICE servers (see the module docstring), [] when none are configured."""
    environ = os.environ if environ is None else environ
    raw = environ.get(ENV_VAR, "").strip()
    if raw:
        try:
            servers = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RtcConfigError(f"{ENV_VAR}: not valid JSON ({exc})") from None
        return _validate(servers, ENV_VAR)
    section = (_streamlit_secrets() if secrets is None else secrets).get(SECRETS_SECTION)
    if section is None:
        return []
    if not isinstance(section, Mapping):
        raise RtcConfigError(f"secrets.toml: [{SECRETS_SECTION}] must be a table")
    servers = section.get(SECRETS_KEY)
    return [] if servers is None else _validate(servers, f"secrets.toml [{SECRETS_SECTION}] {SECRETS_KEY}")


def _streamlit_secrets() -> Mapping[str, Any]:
    """st.secrets when a secrets.toml exists (accessing it otherwise raises), else {}."""
    import streamlit as st

    return st.secrets if st.secrets.load_if_toml_exists() else {}


def _validate(servers: Any, source: str) -> list[dict[str, Any]]:
    """Plain dicts with a non-empty `urls` (str or list of str); bare URL strings become `{"urls": URL}`."""
    if not isinstance(servers, (list, tuple)):
        raise RtcConfigError(f"{source}: expected a list of ICE servers, got {type(servers).__name__}")
    out = []
    for i, server in enumerate(servers):
        where = f"{source}[{i}]"
        if isinstance(server, str):
            server = {"urls": server}
        if not isinstance(server, Mapping):
            raise RtcConfigError(f"{where}: expected a URL or a table with 'urls', got {type(server).__name__}")
        server = {str(k): _plain(v) for k, v in server.items()}
        unknown = sorted(set(server) - _ICE_KEYS)
        if unknown:
            allowed = ", ".join(sorted(_ICE_KEYS))
            raise RtcConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {allowed})")
        urls = server.get("urls")
        url_list = [urls] if isinstance(urls, str) else urls
        if not url_list or not isinstance(url_list, list) or not all(isinstance(u, str) and u for u in url_list):
            raise RtcConfigError(f"{where}: 'urls' must be a URL or a non-empty list of URLs")
        bad = [u for u in url_list if not u.startswith(("stun:", "stuns:", "turn:", "turns:"))]
        if bad:
            raise RtcConfigError(f"{where}: {bad[0]!r} is not a stun:, stuns:, turn: or turns: URL")
        out.append(server)
    return out


def _plain(value: Any) -> Any:
    """Secrets come as read-only mapping/sequence types: turn them into plain JSON-able values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
