"""The checks a start makes before it binds anything or touches the data: the listen and
metrics addresses, the TLS files, the port, the data directory and the disk under it. Each
refusal is a ServerConfigError (or a storage error) whose message says what to change; none
of them creates anything."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import ssl
from pathlib import Path

import grpc

from segsvc.config import Config
from segsvc.sizes import approximate_size
from segsvc.storage.store import DATA_FILE, MiB, check_not_in_use, reserve_for


class ServerConfigError(ValueError):
    """The configuration cannot be served as given; the message says what to change."""


def split_listen(listen: str) -> tuple[str, str]:
    """HOST and PORT of HOST:PORT, brackets of an IPv6 host removed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ServerConfigError(f"listen address {listen!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), port


def check_listen_address(listen: str, authenticated: bool) -> None:
    """Without tokens, anyone who can connect can read and change everything: only this
    machine may connect then."""
    host, _ = split_listen(listen)
    if authenticated or _is_loopback(host):
        return
    raise ServerConfigError(
        f"refusing to listen on {listen} without authentication: anyone on the network "
        "could read and change every segment. Give a tokens file, or listen on 127.0.0.1"
    )


def check_metrics_address(listen: str, guarded: bool) -> None:
    """/metrics tells workspace names and sizes to whoever connects: beyond this machine only
    on a server that guards its data (tokens or TLS) anyway."""
    host, _ = split_listen(listen)
    if guarded or _is_loopback(host):
        return
    raise ServerConfigError(
        f"refusing to serve metrics on {listen} without tokens or TLS: workspace names and "
        "sizes would be open to the network. Give a tokens file or TLS, or use "
        "--metrics-listen 127.0.0.1:PORT"
    )


def check_port_free(listen: str) -> None:
    """Refuses an address another process listens on (or a port this user may not use) before
    the engine loads: the bind after loading still decides, this only makes the common
    mistake quick to see and leaves the data untouched."""
    host, port = split_listen(listen)
    if port == "0":
        return
    try:
        addresses = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise ServerConfigError(f"cannot listen on {listen}: {exc}") from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            # As grpc does: a port whose last connections are in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ServerConfigError(
                        f"cannot listen on {listen}: another process listens there"
                    ) from None
                if exc.errno == errno.EACCES:
                    raise ServerConfigError(
                        f"cannot listen on {listen}: this user may not use port {port}"
                    ) from None
                # Anything else (say, no IPv6 on this host) is for grpc's bind to judge.


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def tls_credentials(config: Config) -> grpc.ServerCredentials | None:
    if config.tls_cert is None and config.tls_key is None:
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ServerConfigError("TLS needs both a certificate and a private key")
    check_tls_files(config.tls_cert, config.tls_key)
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
    )


class _EncryptedKey(Exception):
    pass


def _refuse_passphrase() -> str:
    raise _EncryptedKey


def check_tls_files(cert: Path, key: Path) -> None:
    """Raises ServerConfigError naming the file that is wrong, unless `cert` is a PEM
    certificate chain and `key` the unencrypted PEM private key of its first certificate.
    grpc itself would only say that it failed to bind."""
    cert_text, key_text = _read_pem(cert, "certificate"), _read_pem(key, "private key")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        swapped = " (it holds a private key: are the certificate and key swapped?)"
        raise ServerConfigError(
            f"the TLS certificate {cert} holds no PEM certificate"
            + (swapped if "PRIVATE KEY-----" in cert_text else "")
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cadata=cert_text)
    except ssl.SSLError as exc:
        raise ServerConfigError(
            f"the TLS certificate {cert} cannot be read: {exc.reason or exc}"
        ) from None
    if "PRIVATE KEY-----" not in key_text:
        raise ServerConfigError(f"the TLS key {key} holds no PEM private key")
    try:
        context.load_cert_chain(cert, key, password=_refuse_passphrase)
    except _EncryptedKey:
        raise ServerConfigError(
            f"the TLS key {key} is encrypted: give it without a passphrase "
            "(openssl pkey -in KEY -out PLAIN_KEY)"
        ) from None
    except ssl.SSLError as exc:
        # NO_CERTIFICATE_ASSIGNED: a key of another type than the certificate's (EC for RSA).
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            raise ServerConfigError(
                f"the TLS key {key} is not the key of the certificate in {cert} (the first "
                "certificate of the file must be the server's own)"
            ) from None
        raise ServerConfigError(
            f"the TLS key {key} cannot be read as a PEM private key: {exc.reason or exc}"
        ) from None


def _read_pem(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except OSError as exc:
        raise ServerConfigError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ServerConfigError(
            f"the TLS {what} {path} is not PEM text (DER? convert it with openssl)"
        ) from None


def check_data_dir(path: Path, map_size: int) -> None:
    """Raises ServerConfigError (or StoreLockedError) unless this process can use `path` as
    its data directory, or create it: a file in the way, a directory this process cannot
    write, a store another server holds, a disk too full for a new store. Only looks: a
    refused start must leave the disk as it found it."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path:
        if not path.is_dir():
            raise ServerConfigError(f"the data directory {path} is not a directory")
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise ServerConfigError(f"the data directory {path} is {_unwritable(path)}")
        check_not_in_use(path)
    elif not existing.is_dir():
        raise ServerConfigError(f"cannot create the data directory {path}: {existing} is a file")
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise ServerConfigError(
            f"cannot create the data directory {path}: {existing} is {_unwritable(existing)}"
        )
    if not (path / DATA_FILE).exists():
        _check_room_for_a_new_store(path, existing, map_size)


def _unwritable(path: Path) -> str:
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return "on a read-only filesystem"
    return "not writable by this user"


def _check_room_for_a_new_store(path: Path, existing: Path, map_size: int) -> None:
    """A new store on a disk without room beyond the reserve would refuse its first write:
    refused now instead. An existing store starts however full its disk (reads work, and
    the engine refuses writes until there is room)."""
    disk = os.statvfs(existing)
    free = disk.f_bavail * disk.f_frsize
    needed = reserve_for(min(map_size, disk.f_blocks * disk.f_frsize)) + MiB
    if free < needed:
        raise ServerConfigError(
            f"the disk holding {path} is full: {approximate_size(free)} free, a new store "
            f"needs at least {approximate_size(needed)}; free some space or choose another --data"
        )
