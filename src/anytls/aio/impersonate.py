"""A browser's ClientHello: the client's TLS connection made by curl-impersonate.

CPython's ``ssl`` (OpenSSL 3) cannot send what a browser sends: no GREASE, no shuffled
extensions, no X25519MLKEM768 share, and the SCSV it cannot drop; one JA4 rule would
block every user. ``curl_cffi`` ships curl-impersonate (curl on BoringSSL with each
browser's exact TLS settings), so the connection is made by curl instead:

* the handshake is a ``CURLOPT_CONNECT_ONLY`` transfer of an ``https://`` URL, driven by
  a curl multi handle of its own on this event loop (curl_cffi's asyncio helper removes
  the handle when the transfer ends, and that closes a connect-only connection);
* afterwards the encrypted stream is read and written with ``curl_easy_recv`` and
  ``curl_easy_send`` (exported by the library, but not declared by curl_cffi's cffi
  module: they are bound here through a small ABI-mode cffi declaration), watched on the
  socket from ``CURLINFO_ACTIVESOCKET``, and exposed as an :class:`asyncio.Transport`
  (:class:`CurlTransport`) under the same protocol as the ``ssl`` path.

Certificates are checked as on the ``ssl`` path: the CAs CPython would trust (or
``ca_file``), the name, or nothing (``insecure``, or a pin the caller checks against the
leaf's DER from ``CURLINFO_CERTINFO`` before it sends a byte). A server that answers the
browser's ALPN offer with ``h2`` gets curl's HTTP/2 preface, as a browser's, and the
connection is closed with :class:`ImpersonationError` before anything of ours (the
password's hash) is sent. The handshake's details (version, cipher, ALPN) come from
curl's trace, which curl writes into memory (:class:`_Trace`). The
curl_cffi version is pinned in ``pyproject.toml`` because this module relies on those
details (``tests/aio/test_impersonate.py`` checks them).
"""

from __future__ import annotations

import asyncio
import asyncio.trsock
import base64
import collections
import contextlib
import functools
import ipaddress
import logging
import os
import re
import socket
import ssl
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError, ImpersonationError, SessionClosedError

log = logging.getLogger("anytls.client")

#: The ``fingerprint`` value that keeps CPython's ``ssl`` (OpenSSL) for the handshake.
OPENSSL = "openssl"
#: The default fingerprint: the newest Chrome curl-impersonate knows.
DEFAULT_FINGERPRINT = "chrome"

_CURLE_OK = 0
_CURLE_AGAIN = 81
_CURLE_COULDNT_CONNECT = 7
_CURLE_OPERATION_TIMEDOUT = 28
_CURLE_RECV_ERROR = 56
_CURLE_SSL_CONNECT_ERROR = 35
_CURLE_PEER_FAILED_VERIFICATION = 60
_CURLE_SSL_CACERT_BADFILE = 77
_CURL_SOCKET_TIMEOUT = -1
_CURLMSG_DONE = 1
_CURLINFO_TEXT = 0
_ALPN_ACCEPTED = "ALPN: server accepted "
#: High and low write-buffer marks (bytes), asyncio's defaults.
_HIGH_WATER = 64 * 1024
_LOW_WATER = 16 * 1024
#: The most plaintext one TLS record carries: a read that returns less got a short record.
_RECORD_DATA = 16384


# ---------------------------------------------------------------------- the library


class _Curl:
    """curl_cffi's objects plus the functions its cffi module does not declare."""

    def __init__(self) -> None:
        # TLS_KEY_LOG (as on the ssl path): curl reads SSLKEYLOGFILE when it initialises.
        if os.environ.get("TLS_KEY_LOG") and not os.environ.get("SSLKEYLOGFILE"):
            os.environ["SSLKEYLOGFILE"] = os.environ["TLS_KEY_LOG"]
        import cffi  # type: ignore[import-untyped]
        from curl_cffi import Curl, CurlInfo, CurlMOpt, CurlOpt, _wrapper
        from curl_cffi.requests.impersonate import BrowserType, resolve_latest_browser_type

        self.Curl = Curl
        self.CurlOpt = CurlOpt
        self.CurlInfo = CurlInfo
        self.CurlMOpt = CurlMOpt
        self.ffi = _wrapper.ffi
        self.lib = _wrapper.lib
        self.targets = sorted(b.value for b in BrowserType)
        self.resolve_alias: Any = resolve_latest_browser_type
        own = self.own_ffi = cffi.FFI()
        own.cdef(
            """
            struct curl_slist { char *data; struct curl_slist *next; };
            struct curl_certinfo { int num_of_certs; struct curl_slist **certinfo; };
            int curl_easy_send(void *curl, const char *buffer, size_t buflen, size_t *n);
            int curl_easy_recv(void *curl, char *buffer, size_t buflen, size_t *n);
            int curl_easy_getinfo(void *curl, int info, ...);
            void *open_memstream(char **ptr, size_t *sizeloc);
            int fflush(void *stream);
            int fclose(void *stream);
            void free(void *ptr);
            """
        )
        # cffi parses a type string (with pycparser) the first time it is used, 3-4 ms
        # for these: done at load rather than during the first session's handshake.
        for ctype in ("void *", "char **", "size_t *", "uintptr_t", "struct curl_certinfo **"):
            own.typeof(ctype)
        shared = own.dlopen(_wrapper.__file__)
        self.send = shared.curl_easy_send
        self.recv = shared.curl_easy_recv
        self.getinfo = shared.curl_easy_getinfo
        #: libc's stdio, for curl's trace written into memory (None: not available).
        self.libc: Any = None
        with contextlib.suppress(OSError, AttributeError):
            libc = own.dlopen(None)
            for name in ("open_memstream", "fflush", "fclose", "free"):
                getattr(libc, name)
            self.libc = libc

    def own_pointer(self, handle: Any) -> Any:
        """curl_cffi's ``CURL *`` as a pointer of the module's own cffi declarations."""
        address = int(self.ffi.cast("uintptr_t", handle))
        return self.own_ffi.cast("void *", address)


_library: _Curl | None = None


def library() -> _Curl:
    """Load curl_cffi once; :class:`ImpersonationError` when it is missing or unusable."""
    global _library
    if _library is None:
        try:
            _library = _Curl()
        except (ImportError, OSError, AttributeError) as exc:
            raise ImpersonationError(
                f"cannot load curl_cffi for the browser fingerprint ({exc}); install "
                "anytls's pinned curl_cffi, or use fingerprint=openssl"
            ) from exc
    return _library


def fingerprint_names() -> list[str]:
    """Every accepted ``fingerprint`` value: ``openssl`` and curl-impersonate's targets."""
    try:
        targets = library().targets
    except ImpersonationError:
        targets = []
    aliases = ["chrome", "chrome_android", "edge", "firefox", "safari", "safari_ios", "tor"]
    return [OPENSSL, *aliases, *(t for t in targets if t not in aliases)]


def check_fingerprint(name: str) -> str:
    """``name`` if it is a known fingerprint, else :class:`ConfigError` listing them."""
    if name == OPENSSL:
        return name
    names = fingerprint_names()
    if name not in names:
        raise ConfigError(
            f"unknown fingerprint {name!r}; valid: {', '.join(names)} "
            f"(default {DEFAULT_FINGERPRINT}; {OPENSSL} is Python's own TLS)"
        )
    return name


@functools.lru_cache(maxsize=64)
def resolve_target(name: str) -> str:
    """The concrete curl-impersonate target of ``name`` (``chrome`` → e.g. ``chrome152``).

    curl accepts a bare alias without an error and then sends its own ClientHello; the
    alias is therefore resolved here and the target's return code checked.
    """
    check_fingerprint(name)
    curl = library()
    target = str(curl.resolve_alias(name))
    if target not in curl.targets:
        raise ConfigError(f"fingerprint {name!r} resolves to {target!r}, unknown to curl")
    return target


# ---------------------------------------------------------------------- the handshake


class _Handshake:
    """One connect-only transfer on a multi handle of its own, driven on this loop.

    curl_cffi's C callbacks (``socket_function``/``timer_function``) call back into the
    object given as their user data through ``loop``, ``_timer``, ``_sockfds`` and
    ``process_data``: this class provides exactly those.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, curl: _Curl, easy: Any) -> None:
        self.loop = loop
        self.curl = curl
        self.easy = easy
        self._timer: asyncio.TimerHandle | None = None
        self._sockfds: set[int] = set()
        self.done: asyncio.Future[int] = loop.create_future()
        self.multi: Any = curl.lib.curl_multi_init()
        self._running = curl.ffi.new("int *")
        self._queued = curl.ffi.new("int *")
        #: curl_slist given to CURLOPT_CONNECT_TO, freed with the handle.
        self.connect_to: Any = None
        self._self_handle = curl.ffi.new_handle(self)
        lib, opt = curl.lib, curl.CurlMOpt
        lib.curl_multi_setopt(self.multi, opt.SOCKETFUNCTION, lib.socket_function)
        lib.curl_multi_setopt(self.multi, opt.TIMERFUNCTION, lib.timer_function)
        lib.curl_multi_setopt(self.multi, opt.SOCKETDATA, self._self_handle)
        lib.curl_multi_setopt(self.multi, opt.TIMERDATA, self._self_handle)

    def start(self) -> None:
        code = self.curl.lib.curl_multi_add_handle(self.multi, self.easy._curl)
        if code:
            raise ImpersonationError(f"curl_multi_add_handle failed ({code})")
        self.process_data(_CURL_SOCKET_TIMEOUT, 0)

    def process_data(self, sockfd: int, ev_bitmask: int) -> None:
        """Let curl act on ``sockfd`` (or its timer) and notice when the transfer ends."""
        if self.done.done() or self.multi is None:
            return
        lib, ffi = self.curl.lib, self.curl.ffi
        lib.curl_multi_socket_action(self.multi, sockfd, ev_bitmask, self._running)
        while True:
            msg = lib.curl_multi_info_read(self.multi, self._queued)
            if msg == ffi.NULL:
                break
            if msg.msg == _CURLMSG_DONE and not self.done.done():
                self.done.set_result(int(msg.data.result))
        if self.done.done():
            self.quiet()

    def quiet(self) -> None:
        """Stop watching curl's sockets and timer (the transport takes the socket over).

        The multi handle's callbacks are unset too: curl must never call back into this
        object later (when the handles are freed, possibly after it is gone)."""
        if self.multi is not None:
            lib, opt, null = self.curl.lib, self.curl.CurlMOpt, self.curl.ffi.NULL
            lib.curl_multi_setopt(self.multi, opt.SOCKETFUNCTION, null)
            lib.curl_multi_setopt(self.multi, opt.TIMERFUNCTION, null)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fd in self._sockfds:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        self._sockfds.clear()

    def cut(self) -> None:
        """Shut the handshake's socket for writing, so curl can send nothing more."""
        for fd in self._sockfds:
            with contextlib.suppress(OSError):
                dup = socket.socket(fileno=os.dup(fd))
                try:
                    dup.shutdown(socket.SHUT_WR)
                finally:
                    dup.close()

    def close(self) -> None:
        """Remove the transfer (closing its connection) and free both handles."""
        self.quiet()
        if not self.done.done():
            self.done.cancel()
        if self.multi is not None:
            lib = self.curl.lib
            lib.curl_multi_remove_handle(self.multi, self.easy._curl)
            lib.curl_multi_cleanup(self.multi)
            self.multi = None
        self.easy.close()
        if self.connect_to is not None:
            self.curl.lib.curl_slist_free_all(self.connect_to)
            self.connect_to = None


class _Trace:
    """What curl tells about the handshake (``CURLOPT_VERBOSE``), as text lines.

    curl writes its lines into memory itself (``CURLOPT_STDERR`` on an
    ``open_memstream`` stream): no call back into Python per line. A Python debug
    callback per trace event (about 45 per handshake) cost about a tenth of the client's
    CPU per handshake. Without libc's ``open_memstream`` the lines come through
    ``CURLOPT_DEBUGFUNCTION``, whose ALPN line also cuts the connection at once (see
    :func:`open_connection`).
    """

    def __init__(self, curl: _Curl, easy: Any, on_line: Any) -> None:
        self._curl = curl
        self._easy = easy
        self._lines: list[str] = []
        self._stream: Any = None
        self._closed = False
        if curl.libc is None:
            self._on_line = on_line
            easy.setopt(curl.CurlOpt.DEBUGFUNCTION, self._debug)
        else:
            own = curl.own_ffi
            self._ptr = own.new("char **")
            self._size = own.new("size_t *")
            stream = curl.libc.open_memstream(self._ptr, self._size)
            if stream == own.NULL:
                raise ImpersonationError("open_memstream failed: out of memory")
            self._stream = stream
            self._set_stderr(stream)
        easy.setopt(curl.CurlOpt.VERBOSE, 1)

    def _set_stderr(self, stream: Any) -> None:
        curl = self._curl
        pointer = curl.ffi.cast("void *", int(curl.own_ffi.cast("uintptr_t", stream)))
        curl.lib._curl_easy_setopt(self._easy._curl, int(curl.CurlOpt.STDERR), pointer)

    def _debug(self, kind: int, data: bytes) -> None:
        if kind == _CURLINFO_TEXT:
            text = data.decode("latin-1")
            self._lines.append(text)
            self._on_line(text)

    def lines(self) -> list[str]:
        """Every line so far."""
        if self._stream is not None:
            self._curl.libc.fflush(self._stream)
            size = self._size[0]
            if size:
                text = self._curl.own_ffi.unpack(self._ptr[0], size).decode("latin-1")
                # curl starts each of its own lines with "* " on a stream.
                return [line.removeprefix("* ") for line in text.splitlines()]
            return []
        return self._lines

    def close(self) -> None:
        """Stop tracing (curl writes nothing more) and free the memory stream."""
        if self._closed:
            return
        self._closed = True
        self._easy.setopt(self._curl.CurlOpt.VERBOSE, 0)
        if self._stream is not None:
            self._set_stderr(self._curl.own_ffi.NULL)  # curl's default again, unused
            libc = self._curl.libc
            libc.fclose(self._stream)
            libc.free(self._ptr[0])
            self._stream = None


class TLSInfo:
    """What the ``ssl_object`` extra info offers on the ``ssl`` path, for curl's TLS."""

    def __init__(self, version: str, cipher: str, der: bytes | None, alpn: str | None) -> None:
        self._version = version
        self._cipher = cipher
        self._der = der
        self._alpn = alpn

    def version(self) -> str:
        """Negotiated protocol version, e.g. ``TLSv1.3``."""
        return self._version

    def cipher(self) -> tuple[str, str, int]:
        """``(name, version, bits)`` like :meth:`ssl.SSLObject.cipher` (bits unknown: 0)."""
        return (self._cipher, self._version, 0)

    def selected_alpn_protocol(self) -> str | None:
        """The ALPN protocol the server chose, if any."""
        return self._alpn

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        """The server certificate's DER with ``binary_form`` (else None: not decoded)."""
        return self._der if binary_form else None


def _parse_connected(text: str) -> tuple[str, str] | None:
    # "SSL connection using TLSv1.3 / TLS_AES_128_GCM_SHA256 / X25519MLKEM768 / ..."
    marker = "SSL connection using "
    start = text.find(marker)
    if start < 0:
        return None
    parts = [p.strip() for p in text[start + len(marker) :].split("/")]
    if len(parts) < 2:
        return None
    return parts[0], parts[1]


def _accepted_alpn(line: str) -> str | None:
    """The protocol of curl's "ALPN: server accepted ..." line, else None."""
    return line[len(_ALPN_ACCEPTED) :].strip() if line.startswith(_ALPN_ACCEPTED) else None


def _leaf_der(curl: _Curl, easy: Any) -> bytes | None:
    own = curl.own_ffi
    out = own.new("struct curl_certinfo **")
    code = curl.getinfo(curl.own_pointer(easy._curl), int(curl.CurlInfo.CERTINFO), out)
    if code != _CURLE_OK or out[0] == own.NULL or out[0].num_of_certs < 1:
        return None
    item = out[0].certinfo[0]
    while item != own.NULL:
        entry = own.string(item.data)
        if entry.startswith(b"Cert:"):
            return _pem_der(entry[5:])
        item = item.next
    return None


@functools.lru_cache(maxsize=16)
def _pem_der(pem: bytes) -> bytes:
    """The DER of one PEM block (cached: every session to a server shows the same one)."""
    body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
    return base64.b64decode(body)


@functools.lru_cache(maxsize=64)
def _url_host(name: str) -> str:
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return name
    return f"[{ip}]" if ip.version == 6 else str(ip)


async def open_connection(
    protocol_factory: Any,
    host: str,
    port: int,
    *,
    fingerprint: str,
    server_hostname: str | None,
    insecure: bool = False,
    ca_file: str | None = None,
    pinned: bool = False,
    timeout: float = 10.0,  # noqa: ASYNC109 (curl's own connect timeout, not asyncio's)
    tcp_fast_open: bool = False,
    display: str | None = None,
) -> tuple[CurlTransport, Any]:
    """Connect to ``host:port`` with ``fingerprint``'s ClientHello, like
    :meth:`asyncio.loop.create_connection` with ``ssl=``.

    ``server_hostname`` is the SNI and the name verified (``None`` or an IP: no SNI);
    ``insecure`` skips verification, and so does ``pinned`` (the caller then checks the
    leaf's DER, ``get_extra_info("ssl_object").getpeercert(True)``, against its pin).
    ``tcp_fast_open``: the ClientHello rides in the SYN when the kernel has a cookie
    (curl's ``CURLOPT_TCP_FASTOPEN``). ``display`` names the server in error messages
    (e.g. the name ``host`` was resolved from).
    """
    loop = asyncio.get_running_loop()
    where = f"{display or host}:{port}"  # (for error messages)
    curl = library()
    target = resolve_target(fingerprint)
    easy = curl.Curl()
    opt = curl.CurlOpt
    # The URL names what curl sends as SNI and verifies; CONNECT_TO sends it to host:port.
    name = server_hostname or host
    if not server_hostname and not _is_ip(host):
        name = "0.0.0.0"  # no SNI wanted for a named host: curl sends none for an IP
    url = f"https://{_url_host(name)}:{port}/"
    handshake: _Handshake | None = None
    trace: _Trace | None = None

    def on_line(text: str) -> None:
        # Only without open_memstream: a line at a time, so an h2 answer can be cut
        # before curl writes its HTTP/2 preface.
        accepted = _accepted_alpn(text)
        if accepted not in (None, "http/1.1") and handshake is not None:
            handshake.cut()

    try:
        code = easy.impersonate(target, default_headers=False)
        if code:
            raise ImpersonationError(f"curl cannot impersonate {target!r} (error {code})")
        easy.setopt(opt.URL, url)
        easy.setopt(opt.CONNECT_ONLY, 1)
        easy.setopt(opt.NOSIGNAL, 1)
        easy.setopt(opt.CONNECTTIMEOUT_MS, max(1, int(timeout * 1000)))
        if tcp_fast_open:
            easy.setopt(opt.TCP_FASTOPEN, 1)
        trace = _Trace(curl, easy, on_line)
        handshake = _Handshake(loop, curl, easy)
        if name != host:
            entry = f"{_url_host(name)}:{port}:{_url_host(host)}:{port}"
            handshake.connect_to = _connect_to(curl, easy, entry)
        if insecure or pinned:
            easy.setopt(opt.SSL_VERIFYPEER, 0)
            easy.setopt(opt.SSL_VERIFYHOST, 0)
        else:
            cafile, capath = _trust_store(ca_file)
            if cafile:
                easy.setopt(opt.CAINFO, cafile)
            else:  # not even curl's built-in bundle: parsed again for every session
                curl.lib._curl_easy_setopt(easy._curl, int(opt.CAINFO), curl.ffi.NULL)
            if capath:
                easy.setopt(opt.CAPATH, capath)
        easy.setopt(opt.CERTINFO, 1)  # the leaf's DER, as getpeercert(binary_form=True)
        handshake.start()
        code = await asyncio.shield(handshake.done)
        lines = trace.lines()
        trace.close()
        version, cipher = "", ""
        alpn: str | None = None
        for text in lines:
            found = _parse_connected(text)
            if found is not None:
                version, cipher = found
            alpn = _accepted_alpn(text) or alpn
        if alpn not in (None, "http/1.1"):
            raise ImpersonationError(
                f"{where} chose ALPN {alpn} for the browser's offer: a web server, not an "
                f"AnyTLS server, or one whose ALPN setting must not include {alpn} "
                "(the connection was closed before anything of ours was sent)"
            )
        if code != _CURLE_OK:
            raise _handshake_error(code, easy, display or host, port, ca_file)
        fd = _info_int(easy, curl.CurlInfo.ACTIVESOCKET)
        if fd < 0:
            raise ImpersonationError(f"curl kept no connection to {where}")
        der = _leaf_der(curl, easy)
        info = TLSInfo(version, cipher, der, alpn)
        extra = {
            "peername": _address(easy, curl.CurlInfo.PRIMARY_IP, curl.CurlInfo.PRIMARY_PORT),
            "sockname": _address(easy, curl.CurlInfo.LOCAL_IP, curl.CurlInfo.LOCAL_PORT),
            "ssl_object": info,
            "fingerprint": target,
        }
        protocol = protocol_factory()
        transport = CurlTransport(loop, protocol, curl, handshake, fd, extra)
        handshake = None  # the transport owns it now
        return transport, protocol
    finally:
        if trace is not None:
            trace.close()
        if handshake is not None:
            handshake.close()


def _trust_store(ca_file: str | None) -> tuple[str | None, str | None]:
    """``(CAINFO, CAPATH)``: ``ca_file`` alone, else what CPython's ``ssl`` would trust
    (OpenSSL's default file and directory, ``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured),
    else certifi's bundle as curl_cffi ships it.

    Every session is a handshake on a curl handle of its own, and curl parses a CA file
    for each one (the system bundle: about 4 ms of CPU per session here). Where OpenSSL's
    default directory holds a hash link for every certificate of the bundle (Debian,
    Ubuntu, Alpine...), the directories alone are given (``SSL_CERT_DIR``'s too): only the
    issuer the server's chain needs is read (about 0.4 ms), with the same roots. A file
    of other certificates (``SSL_CERT_FILE`` naming another one, a bundle with more
    certificates than the directory has links) keeps the file.
    """
    if ca_file:
        return ca_file, None
    paths = ssl.get_default_verify_paths()
    env_file = os.environ.get(paths.openssl_cafile_env)
    default_file, default_dir = paths.openssl_cafile, paths.openssl_capath
    same_file = not env_file or _same_file(env_file, default_file)
    if same_file and default_dir and _directory_covers(default_dir, default_file):
        dirs = [d for d in (os.environ.get(paths.openssl_capath_env), default_dir) if d]
        unique = list(dict.fromkeys(os.path.realpath(d) for d in dirs))
        return None, ":".join(unique)
    if paths.cafile or paths.capath:
        return paths.cafile, paths.capath
    from curl_cffi.curl import DEFAULT_CACERT

    return DEFAULT_CACERT, None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


_HASH_LINK = re.compile(r"[0-9a-f]{8}\.[0-9]+")


def _directory_covers(directory: str, bundle: str) -> bool:
    """True if ``directory`` holds OpenSSL hash links (``openssl rehash``) at least as
    many as ``bundle`` has certificates (checked again when either changes)."""
    try:
        info = os.stat(bundle)
        stamp = (os.stat(directory).st_mtime_ns, info.st_mtime_ns, info.st_size)
    except OSError:
        return False
    return _covers(directory, bundle, stamp)


@functools.lru_cache(maxsize=8)
def _covers(directory: str, bundle: str, _stamp: tuple[int, int, int]) -> bool:
    try:
        with os.scandir(directory) as entries:
            links = sum(1 for entry in entries if _HASH_LINK.fullmatch(entry.name))
        with open(bundle, "rb") as file:
            certificates = file.read().count(b"-----BEGIN CERTIFICATE-----")
    except OSError:
        return False
    return links > 0 and links >= certificates


@functools.lru_cache(maxsize=64)
def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _connect_to(curl: _Curl, easy: Any, entry: str) -> Any:
    """Set CURLOPT_CONNECT_TO (a list curl_cffi's ``setopt`` does not build)."""
    lib = curl.lib
    head = lib.curl_slist_append(curl.ffi.NULL, entry.encode())
    code = lib._curl_easy_setopt(easy._curl, int(curl.CurlOpt.CONNECT_TO), head)
    if code:
        lib.curl_slist_free_all(head)
        raise ImpersonationError(f"curl rejected CONNECT_TO {entry!r} ({code})")
    return head


def _info_int(easy: Any, info: Any) -> int:
    value: Any = easy.getinfo(info)
    return int(value)


def _address(easy: Any, ip_info: Any, port_info: Any) -> tuple[str, int] | None:
    ip = easy.getinfo(ip_info)
    if not ip:
        return None
    return (ip.decode() if isinstance(ip, bytes) else str(ip), _info_int(easy, port_info))


def _handshake_error(code: int, easy: Any, host: str, port: int, ca_file: str | None) -> Exception:
    """The exception ``create_connection(ssl=...)`` would raise for this failure (so the
    caller reports both paths alike), or :class:`SessionClosedError` for curl's own."""
    detail = library().ffi.string(easy._error_buffer).decode("latin-1").strip()
    if code == _CURLE_PEER_FAILED_VERIFICATION:
        ca = f"with the CAs in {ca_file}: " if ca_file else ""
        error = ssl.SSLCertVerificationError(1, f"certificate verify failed: {ca}{detail}")
        error.verify_message = f"{ca}{detail}"
        return error
    if code == _CURLE_SSL_CONNECT_ERROR:
        return ssl.SSLError(1, detail)  # e.g. WRONG_VERSION_NUMBER: not a TLS server
    if code == _CURLE_SSL_CACERT_BADFILE:
        return SessionClosedError(f"cannot use the CA file {ca_file!r}: {detail}")
    if code == _CURLE_OPERATION_TIMEDOUT:
        return TimeoutError(detail)
    errno = _info_int(easy, library().CurlInfo.OS_ERRNO)
    if code == _CURLE_COULDNT_CONNECT and errno:
        return OSError(errno, os.strerror(errno))
    return SessionClosedError(f"cannot connect to {host}:{port}: {detail or f'curl error {code}'}")


# ---------------------------------------------------------------------- the transport


class CurlTransport(asyncio.Transport):
    """An :class:`asyncio.Transport` over a connected curl handle (TLS done by curl).

    Reads fill the protocol's buffer (``BufferedProtocol``) with as many
    ``curl_easy_recv`` calls as fit before one ``buffer_updated``; writes go out at once
    while the socket takes them and are buffered (with asyncio's high/low water marks and
    ``pause_writing``/``resume_writing``) when it does not.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.BufferedProtocol,
        curl: _Curl,
        handshake: _Handshake,
        fd: int,
        extra: dict[str, Any],
    ) -> None:
        super().__init__(extra)
        self._loop = loop
        self._protocol = protocol
        self._curl = curl
        self._handshake = handshake
        self._fd = fd
        self._handle = curl.own_pointer(handshake.easy._curl)
        self._send = curl.send
        self._recv = curl.recv
        self._from_buffer = curl.own_ffi.from_buffer
        self._n = curl.own_ffi.new("size_t *")
        self._sock: socket.socket | None = None
        self._wbuf: collections.deque[bytes] = collections.deque()
        self._woffset = 0
        self._wsize = 0
        self._high = _HIGH_WATER
        self._low = _LOW_WATER
        self._protocol_paused = False
        self._reading = True
        self._closing = False
        self._closed = False
        self._read_scheduled = False
        protocol.connection_made(self)
        loop.add_reader(fd, self._read_ready)
        self._schedule_read()  # the handshake may have left records in curl's buffer

    # ---------------------------------------------------------------- reading
    def _schedule_read(self) -> None:
        if not self._read_scheduled:
            self._read_scheduled = True
            self._loop.call_soon(self._scheduled_read)

    def _scheduled_read(self) -> None:
        self._read_scheduled = False
        if self._reading and not self._closing:
            self._read_ready()

    def _read_ready(self) -> None:
        protocol = self._protocol
        try:
            buf: Any = protocol.get_buffer(-1)
            # A fresh pointer per read event (not per record): a cached one would hold
            # the protocol's buffer exported for as long as the connection lives.
            ptr = self._from_buffer(buf, require_writable=True)
            size = len(buf)
            recv, handle, n = self._recv, self._handle, self._n
            filled = 0
            eof = False
            while filled < size:
                code = recv(handle, ptr + filled, size - filled, n)
                if code == _CURLE_OK:
                    got = n[0]
                    if got == 0:
                        eof = True
                        break
                    filled += got
                    if filled == got < _RECORD_DATA:
                        # A lone short record (a request, a datagram) goes on at once:
                        # the next receive would usually find nothing, and if more has
                        # come the socket stays readable (epoll is level-triggered).
                        break
                elif code == _CURLE_AGAIN:
                    break
                elif code == _CURLE_RECV_ERROR:
                    # The peer's TCP side is gone (FIN without close_notify, or a reset):
                    # what asyncio's ssl transport reports as EOF.
                    eof = True
                    break
                else:
                    self._fatal(ConnectionResetError(f"TLS receive failed (curl error {code})"))
                    return
            if filled:
                protocol.buffer_updated(filled)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc)
            return
        if eof:
            self._eof()
        elif filled == size and self._reading and not self._closing:
            self._schedule_read()  # more may be decrypted already, with no socket event

    def _eof(self) -> None:
        if self._closing:
            self._force_close(None)
            return
        self._loop.remove_reader(self._fd)
        self._reading = False
        keep_open = self._protocol.eof_received()
        if not keep_open:
            self.close()

    def pause_reading(self) -> None:
        """Stop reading until :meth:`resume_reading`."""
        if self._closing or not self._reading:
            return
        self._reading = False
        self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        """Read again (also what curl may have decrypted meanwhile)."""
        if self._closing or self._reading:
            return
        self._reading = True
        self._loop.add_reader(self._fd, self._read_ready)
        self._schedule_read()

    def is_reading(self) -> bool:
        """True unless reading is paused."""
        return self._reading and not self._closing

    # ---------------------------------------------------------------- writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` now if the socket takes it, else buffer it."""
        if not data or self._closing:
            return
        if not self._wbuf:
            # cffi passes a bytes object's own buffer as ``const char *`` (no copy).
            buf = data if type(data) is bytes else self._from_buffer(data)
            code = self._send(self._handle, buf, len(data), self._n)
            if code == _CURLE_OK:
                sent = self._n[0]
                if sent == len(data):
                    return
            elif code == _CURLE_AGAIN:
                sent = 0
            else:
                self._fatal(ConnectionResetError(f"TLS send failed (curl error {code})"))
                return
            # curl needs the rest retried from the same buffer: keep this very object.
            self._wbuf.append(bytes(data) if not isinstance(data, bytes) else data)
            self._woffset = sent
            self._wsize = len(data) - sent
            self._loop.add_writer(self._fd, self._write_ready)
        else:
            self._wbuf.append(bytes(data))
            self._wsize += len(data)
        self._maybe_pause()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write each item in order."""
        for data in list_of_data:
            self.write(data)

    def _write_ready(self) -> None:
        wbuf, send, handle, n = self._wbuf, self._send, self._handle, self._n
        while wbuf:
            head = wbuf[0]
            offset = self._woffset
            rest = len(head) - offset
            code = send(handle, self._from_buffer(head) + offset, rest, n)
            if code == _CURLE_AGAIN:
                break
            if code != _CURLE_OK:
                self._fatal(ConnectionResetError(f"TLS send failed (curl error {code})"))
                return
            sent = n[0]
            self._wsize -= sent
            if sent < rest:
                self._woffset = offset + sent
                break
            wbuf.popleft()
            self._woffset = 0
        if self._protocol_paused and self._wsize <= self._low:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal(exc)
                return
        if not wbuf:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._force_close(None)

    def _maybe_pause(self) -> None:
        if not self._protocol_paused and self._wsize > self._high:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal(exc)

    def get_write_buffer_size(self) -> int:
        """Bytes waiting to be sent."""
        return self._wsize

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """``(low, high)`` water marks."""
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks (asyncio's rules for defaults)."""
        if high is None:
            high = _HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause()

    def can_write_eof(self) -> bool:
        """TLS has no half-close here."""
        return False

    def write_eof(self) -> None:
        """Not supported (as on asyncio's TLS transports)."""
        raise NotImplementedError("a TLS transport cannot half-close")

    # ---------------------------------------------------------------- closing
    def is_closing(self) -> bool:
        """True once closing or closed."""
        return self._closing

    def close(self) -> None:
        """Close after the buffered bytes are sent."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._wbuf:
            self._force_close(None)

    def abort(self) -> None:
        """Close now, dropping buffered bytes."""
        self._closing = True
        self._force_close(None)

    def _fatal(self, exc: BaseException) -> None:
        if not isinstance(exc, OSError):
            log.error("impersonated TLS transport failed", exc_info=exc)
        self._closing = True
        self._force_close(exc if isinstance(exc, Exception) else None)

    def _force_close(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._wbuf.clear()
        self._wsize = 0
        if self._sock is not None:
            self._sock.detach()  # the descriptor is curl's: curl closes it
            self._sock = None
        self._handshake.close()  # curl closes the socket
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """As asyncio's transports: ``peername``, ``sockname``, ``ssl_object`` (a
        :class:`TLSInfo`), ``socket`` (curl's socket, not to be closed or read from), and
        ``fingerprint`` (the curl-impersonate target)."""
        if name == "socket":
            if self._sock is None and not self._closed:
                # A view of curl's descriptor, detached (never closed) when the transport is.
                self._sock = socket.socket(fileno=self._fd)
            return asyncio.trsock.TransportSocket(self._sock) if self._sock else default
        return super().get_extra_info(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol."""
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol (it must be a :class:`asyncio.BufferedProtocol`)."""
        assert isinstance(protocol, asyncio.BufferedProtocol)
        self._protocol = protocol
