"""The web app's request checks, before gradio sees a request (docs/security.md):

* `HostCheck`: the `Host`, and the `Origin` when sent, must name this machine (DNS rebinding and
  cross-site requests). One header each, one host with a numeric port; `Origin: null` is foreign;
  the Origin's port must be the one the request was sent to. With `--listen`, an IP address must be
  one of this machine's own (one it can bind), and a DNS name must be given with `--allow-host`.
* `LoginThrottle`: after `FREE_FAILURES` failed logins, a client address waits a growing delay
  (doubling up to `MAX_DELAY_S`) before the login route answers it again, right password or not.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from urllib.parse import urlsplit

from starlette.responses import PlainTextResponse

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
_HOST = re.compile(r"^(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?$")
DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_host(netloc: str) -> tuple[str, int | None] | None:
    """`127.0.0.1:7860` -> ("127.0.0.1", 7860), `[::1]` -> ("::1", None); None unless one host and a numeric port."""
    match = _HOST.match(netloc.lower())
    if not match:
        return None
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        return None
    return match["ip6"] or match["name"].rstrip("."), port


def own_address(name: str) -> bool:
    """True if `name` is an IP address of this machine: one a socket can bind (never 0.0.0.0 or multicast)."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if address.is_unspecified or address.is_multicast:
        return False
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((str(address), 0))
        except OSError:
            return False
    return True


def host_allowed(name: str, listen: bool, allowed: set[str]) -> bool:
    """Local names always; with --listen also this machine's own IP addresses and the --allow-host names."""
    return name in LOCAL_HOSTS or name in allowed or (listen and own_address(name))


def origin_of(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin header; None for `null` or anything that is not http(s)://host[:port]."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    host = parse_host(parts.netloc)
    if host is None:
        return None
    return parts.scheme, host[0], host[1] or DEFAULT_PORTS[parts.scheme]


def request_allowed(headers: list[tuple[bytes, bytes]], listen: bool, allowed: set[str]) -> bool:
    """The rule above, for one request's raw headers."""
    hosts = [v.decode("latin-1") for k, v in headers if k.lower() == b"host"]
    origins = [v.decode("latin-1") for k, v in headers if k.lower() == b"origin"]
    if len(hosts) != 1 or len(origins) > 1:
        return False
    host = parse_host(hosts[0])
    if host is None or not host_allowed(host[0], listen, allowed):
        return False
    if not origins:
        return True
    origin = origin_of(origins[0])
    if origin is None or not host_allowed(origin[1], listen, allowed):
        return False
    return origin[2] == (host[1] or DEFAULT_PORTS[origin[0]])  # another local app (another port) is foreign


async def _refuse(scope, receive, send, text: str, status: int, headers: dict | None = None) -> None:
    if scope["type"] == "http":
        await PlainTextResponse(text, status_code=status, headers=headers)(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": 1008})


class HostCheck:
    """ASGI middleware: refuse a request whose Host, or Origin when sent, is not this machine (403)."""

    def __init__(self, app, listen: bool = False, allowed_hosts: tuple[str, ...] = ()):
        self.app, self.listen, self.allowed = app, listen, {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and \
                not request_allowed(scope.get("headers", []), self.listen, self.allowed):
            await _refuse(scope, receive, send, "loramix: this Host or Origin is not allowed (see docs/security.md).",
                          403)
            return
        await self.app(scope, receive, send)


class LoginThrottle:
    """ASGI middleware: per client address, after `free` failed logins each answer waits a doubling delay (429)."""

    FREE_FAILURES = 5
    FIRST_DELAY_S = 2.0
    MAX_DELAY_S = 300.0

    def __init__(self, app, free: int = FREE_FAILURES, first_delay_s: float = FIRST_DELAY_S,
                 max_delay_s: float = MAX_DELAY_S):
        self.app, self.free, self.first, self.max = app, free, first_delay_s, max_delay_s
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def _is_login(self, scope) -> bool:
        return scope["type"] == "http" and scope.get("method") == "POST" and \
            scope.get("path", "").rstrip("/").endswith("/login")

    async def __call__(self, scope, receive, send):
        if not self._is_login(scope):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        wait = self._until.get(client, 0.0) - time.monotonic()
        if wait > 0:
            await _refuse(scope, receive, send, f"loramix: too many failed logins from your address; try again in "
                                                f"{wait:.0f} s.", 429, {"Retry-After": str(max(1, round(wait)))})
            return
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        self._count(client, status.get("code"))

    def _count(self, client: str, code: int | None) -> None:
        with self._lock:
            if code == 200:
                self._failures.pop(client, None)
                self._until.pop(client, None)
            elif code in (400, 401):  # gradio answers a wrong user or password with 400
                if len(self._failures) > 10_000:  # many addresses: forget the ones no longer waiting
                    now = time.monotonic()
                    self._failures = {c: n for c, n in self._failures.items() if self._until.get(c, 0) > now}
                failures = self._failures.get(client, 0) + 1
                self._failures[client] = failures
                if failures >= self.free:
                    delay = min(self.first * 2 ** (failures - self.free), self.max)
                    self._until[client] = time.monotonic() + delay
