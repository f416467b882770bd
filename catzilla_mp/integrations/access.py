"""Who may use the engine's web routes: the default policy and the ``authorize`` hook.

Two kinds of route, two rules (docs/web.md states them for users):

* **Observability** (``{prefix}/stats``, ``{prefix}/dashboard...``,
  ``/metrics``) shows every task of every user. With an ``authorize`` hook,
  the hook decides. Without one, only a *local* client gets in: its socket
  peer is a loopback address AND the request carries no proxy header
  (``Forwarded``, ``X-Forwarded-For``, ``X-Real-IP``) — behind a reverse
  proxy on the same host every client would otherwise look local. Others
  get 403.
* **A task** (``{prefix}/{task_id}``, ``.../events``,
  ``{prefix}/requests/{id}``) answers its *owner*, or a caller who may see
  the observability routes (who sees every task on the dashboard anyway);
  anyone else gets the same 404 as for a task that does not exist.
  The owner is fixed when the task is submitted inside a request: the
  ``owner`` hook's answer for that request (e.g. the app's user id), or,
  without one, the browser session — a random token in a signed, HttpOnly,
  SameSite=Lax cookie that the submitting response sets. A task submitted
  outside a request has no owner: only an observer can open it.

Task ids are 128 random bits (engine.py), so an id is not guessable either;
the owner check is what keeps an id that leaked (logs, a shared link, the
dashboard) from being a key to someone else's result.

The hook is ``authorize(request) -> bool`` (or an awaitable of bool), with
the framework's own request object; when given, it replaces the local-client
rule (a local client is then nobody special), and it is asked at most once
per request.
"""
from __future__ import annotations

import hashlib
import hmac
import inspect
import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional, Union

from .tracking import RequestInfo

Authorize = Callable[[Any], Union[bool, Awaitable[bool]]]
OwnerOf = Callable[[Any], Optional[str]]

#: The session cookie that makes a browser the owner of the tasks it submitted.
OWNER_COOKIE = "czmp_owner"
#: Headers a reverse proxy adds: their presence means the peer is a proxy, not the client.
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
_TOKEN_BYTES = 16
_MAC_BYTES = 16


@dataclass
class Caller:
    """What the policy needs of one HTTP request, whatever the framework."""

    request: Any                     # the framework's request (handed to the hooks)
    peer: Optional[str]              # the socket's peer address
    proxied: bool                    # a proxy header is present
    cookie: Optional[str] = None     # the owner cookie's raw value, if sent
    _hook_answer: Optional[bool] = field(default=None, repr=False)


def is_loopback(peer: Optional[str]) -> bool:
    """True for 127.0.0.0/8, ::1 and ::ffff:127.x; False for anything else or garbage."""
    if not peer:
        return False
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def is_local(caller: Caller) -> bool:
    """A loopback peer, and no proxy header (a local proxy makes every client look local)."""
    return is_loopback(caller.peer) and not caller.proxied


class TaskAccess:
    """The access policy of one integration (see the module doc).

    Args:
        authorize: ``authorize(request) -> bool`` (sync or async). True lets
            the caller see every route and every task.
        owner: ``owner(request) -> str | None``: who owns the tasks this
            request submits (e.g. the logged-in user's id). None (the
            default) uses the session cookie.
        secret: the key that signs session cookies (bytes or str). Default:
            random per process; give one to share sessions between the
            processes of a multi-process server.
        cookie_secure: mark the cookie Secure (HTTPS only).
    """

    def __init__(self, authorize: Optional[Authorize] = None, *,
                 owner: Optional[OwnerOf] = None, secret: Union[bytes, str, None] = None,
                 cookie_secure: bool = False, cookie_name: str = OWNER_COOKIE) -> None:
        if authorize is not None and not callable(authorize):
            raise TypeError(f"authorize must be callable, not {type(authorize).__name__}")
        if owner is not None and not callable(owner):
            raise TypeError(f"owner must be callable, not {type(owner).__name__}")
        self.authorize = authorize
        self.owner = owner
        self._key = secret.encode() if isinstance(secret, str) else (
            secret or secrets.token_bytes(32))
        self.cookie_secure = cookie_secure
        self.cookie_name = cookie_name

    # -- the hook -----------------------------------------------------------------

    async def hook_allows(self, caller: Caller) -> bool:
        """The authorize hook's answer (False without a hook), asked once per request."""
        if self.authorize is None:
            return False
        if caller._hook_answer is None:
            answer = self.authorize(caller.request)
            if inspect.isawaitable(answer):
                answer = await answer
            caller._hook_answer = answer is True
        return caller._hook_answer

    # -- observability routes -------------------------------------------------------

    async def may_observe(self, caller: Caller) -> bool:
        """Dashboard, stats, metrics: the hook if there is one, else local clients only."""
        if self.authorize is not None:
            return await self.hook_allows(caller)
        return is_local(caller)

    # -- tasks ------------------------------------------------------------------------

    def caller_owner(self, caller: Caller) -> Optional[str]:
        """Who this caller is, as an owner: the owner hook's answer, or a valid session."""
        if self.owner is not None:
            who = self.owner(caller.request)
            return None if who is None else "user:" + str(who)
        token = self._verify(caller.cookie)
        return None if token is None else "session:" + token

    async def may_read(self, caller: Caller, task: Any) -> bool:
        """True if ``caller`` owns ``task``, or may observe (the hook, or a local client)."""
        owned_by = task_owner(task)
        if owned_by is not None:
            mine = self.caller_owner(caller)
            if mine is not None and hmac.compare_digest(mine, owned_by):
                return True
        return await self.may_observe(caller)

    def owner_for_submission(self, info: RequestInfo) -> Optional[str]:
        """The owner of a task submitted in request ``info``; mints a session if needed.

        A minted session is left in ``info.state["set_cookie"]``, which the
        integration turns into a Set-Cookie header on the response.
        """
        state = info.state
        if "owner" in state:
            return state["owner"]
        caller = state.get("caller")
        owner = None
        if caller is not None:
            owner = self.caller_owner(caller)
            if owner is None and self.owner is None:
                token = secrets.token_urlsafe(_TOKEN_BYTES)
                state["set_cookie"] = self._cookie_header(token + "." + self._mac(token))
                owner = "session:" + token
        state["owner"] = owner
        return owner

    # -- the session cookie ---------------------------------------------------------

    def _mac(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()[:2 * _MAC_BYTES]

    def _verify(self, value: Optional[str]) -> Optional[str]:
        if not value or len(value) > 200:
            return None
        token, _, mac = value.partition(".")
        if token and mac and hmac.compare_digest(mac, self._mac(token)):
            return token
        return None

    def _cookie_header(self, value: str) -> str:
        parts = [f"{self.cookie_name}={value}", "Path=/", "HttpOnly", "SameSite=Lax"]
        if self.cookie_secure:
            parts.append("Secure")
        return "; ".join(parts)

    def cookie_from_header(self, header: Optional[str]) -> Optional[str]:
        """This policy's cookie value from a raw Cookie header."""
        if not header:
            return None
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie_name:
                return value.strip().strip('"')
        return None


def task_owner(task: Any) -> Optional[str]:
    """The owner recorded on a task at submission (None: submitted outside a request)."""
    meta = getattr(task, "meta", None)
    return meta.get("owner") if isinstance(meta, dict) else None
