"""The socket peer of a Catzilla 0.2.3 request, which Catzilla itself does not expose.

``Request.client_ip`` trusts ``X-Forwarded-For`` / ``X-Real-IP`` (any client
can send them), and the C function it falls back on (``get_client_ip``) is
not in Catzilla 0.2.3's extension. The request's ``client`` is a capsule
("catzilla.client") around the connection's libuv TCP handle, and the
extension exports libuv: ``uv_fileno`` first checks that the handle is a
stream (else UV_EINVAL), then ``uv_tcp_getpeername`` reads the kernel's
peer address. Anything unexpected answers None: an unknown peer is never
treated as local.
"""
from __future__ import annotations

import ctypes
import socket
import threading
from typing import Any, Optional

_lock = threading.Lock()
_api: Any = None          # (PyCapsule_GetPointer, uv_fileno, uv_tcp_getpeername), or False
_SOCKADDR_BYTES = 128     # sizeof(struct sockaddr_storage)


def _load() -> Any:
    global _api
    with _lock:
        if _api is None:
            try:
                import catzilla._catzilla as ext

                lib = ctypes.CDLL(ext.__file__)
                get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
                get_pointer.restype = ctypes.c_void_p
                get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
                fileno = lib.uv_fileno
                fileno.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
                fileno.restype = ctypes.c_int
                peername = lib.uv_tcp_getpeername
                peername.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
                peername.restype = ctypes.c_int
                _api = (get_pointer, fileno, peername)
            except (ImportError, OSError, AttributeError):
                _api = False
        return _api


def catzilla_peer(request: Any) -> Optional[str]:
    """The IP address of the request's TCP peer, or None if it cannot be known."""
    api = _load()
    client = getattr(request, "client", None)
    if not api or client is None:
        return None
    get_pointer, fileno, peername = api
    try:
        handle = get_pointer(client, b"catzilla.client")
    except (ValueError, TypeError):
        return None
    if not handle:
        return None
    fd = ctypes.c_int(-1)
    if fileno(handle, ctypes.byref(fd)) != 0 or fd.value < 0:
        return None
    buf = ctypes.create_string_buffer(_SOCKADDR_BYTES)
    size = ctypes.c_int(_SOCKADDR_BYTES)
    if peername(handle, buf, ctypes.byref(size)) != 0:
        return None
    raw = buf.raw
    family = int.from_bytes(raw[0:2], "little")   # sa_family_t, host order (Linux x86/arm)
    try:
        if family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, raw[4:8])
        if family == socket.AF_INET6:
            return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    except (OSError, ValueError):
        return None
    return None
