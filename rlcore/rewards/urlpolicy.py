"""Which reward URLs a job may call: the service runs user-given URLs from inside its network (SSRF).

Rules, in order: http or https only; no credentials in the URL (they belong in ``reward.headers``); the
host must match the allowlist when one is set (an exact host or ``*.suffix``); every address the host
resolves to must be public. Loopback and private ranges are allowed only with ``allow_private`` (local
runs, tests, an operator who hosts reward servers next to the workers). Link-local addresses and cloud
metadata endpoints are refused always: nothing legitimate serves rewards there.

The check resolves names itself, so a name that points at 10.0.0.5 is refused like the address. DNS can
change after the check; the HTTP client re-checks before each step (with a short cache) to narrow that
window, but it does not pin the connection to the checked address.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from rlcore.errors import RewardURLForbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)


class UnresolvableHost(RewardURLForbidden):
    """The host name does not resolve (now). The HTTP client treats this as a retryable network error."""


def check_reward_url(url: str, allow_private: bool, allowlist: list[str] | None = None) -> None:
    """Raise ``RewardURLForbidden`` saying why, unless a job may call ``url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise RewardURLForbidden(
            f"reward URL {url!r}: scheme {parts.scheme or '(none)'!r} is not allowed; use http:// or https://"
        )
    if "@" in parts.netloc:
        raise RewardURLForbidden(
            "reward URL must not carry credentials (user:password@host): put them in reward.headers, "
            "e.g. Authorization"
        )
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise RewardURLForbidden(f"reward URL {url!r} has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise RewardURLForbidden(f"reward URL {url!r}: bad port ({exc})") from exc
    if allowlist is not None and not host_allowed(host, allowlist):
        raise RewardURLForbidden(
            f"reward URL host {host!r} is not in this server's allowlist of reward hosts "
            f"({', '.join(allowlist) or 'empty'}); ask the operator to add it"
        )
    for address in resolve(host, port):
        _check_address(host, address, allow_private)


def host_allowed(host: str, allowlist: list[str]) -> bool:
    """``host`` equals an entry, or an entry ``*.example.com`` and host is a subdomain of example.com."""
    for entry in allowlist:
        entry = entry.strip().rstrip(".").lower()
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        return [_unmap(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHost(f"reward URL host {host!r} does not resolve: {exc}") from exc
    # getaddrinfo gives "fe80::1%eth0" for scoped addresses; the scope does not change the verdict.
    return sorted({_unmap(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos}, key=str)


def _unmap(address: IPAddress) -> IPAddress:
    # ::ffff:169.254.169.254 reaches the IPv4 address: judge that one.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _check_address(host: str, address: IPAddress, allow_private: bool) -> None:
    where = f"reward URL host {host!r}" + ("" if host == str(address) else f" resolves to {address}, which")
    if address in METADATA_ADDRESSES:
        raise RewardURLForbidden(f"{where} is a cloud metadata address; it is never allowed")
    if address.is_link_local:
        raise RewardURLForbidden(f"{where} is link-local; it is never allowed")
    if address.is_multicast:
        raise RewardURLForbidden(f"{where} is a multicast address; a reward endpoint needs a unicast host")
    if address.is_global or allow_private:
        return
    kind = "loopback" if address.is_loopback or address.is_unspecified else "private or reserved"
    raise RewardURLForbidden(
        f"{where} is a {kind} address; this server only calls public reward endpoints "
        "(private addresses are allowed for local runs, or by the operator's setting)"
    )
