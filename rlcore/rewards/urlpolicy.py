"""Which reward URLs a job may call: the service runs user-given URLs from inside its network (SSRF).

Rules, in order: http or https only; no credentials in the URL (they belong in ``reward.headers``); the
host must match the allowlist when one is set (an exact host or ``*.suffix``); every address the host
resolves to must be public. Loopback and private ranges are allowed only with ``allow_private`` (local
runs, tests, an operator who hosts reward servers next to the workers). Link-local addresses and cloud
metadata endpoints are refused always: nothing legitimate serves rewards there.

IPv6 addresses that carry an IPv4 address reach that IPv4 host (through a translator or a tunnel), so
the embedded IPv4 address is judged, not the IPv6 form: IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
``::a.b.c.d``, SIIT ``::ffff:0:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d`` (and the local-use ``64:ff9b:1::/48``,
itself never public, judged at every RFC 6052 position), 6to4 ``2002:AABB:CCDD::/48`` and Teredo
``2001::/32`` (the client address, stored inverted).

``RewardURLPolicy`` is the policy as one value, passed whole from the settings
(``RLFT_ALLOW_PRIVATE_REWARD_URLS``, ``RLFT_REWARD_URL_ALLOWLIST``) to the service's checks, the training
process and the engine. Its default denies private addresses, like the settings; a run on one's own
machine asks for ``RewardURLPolicy.local()``.

The check resolves names itself, so a name that points at 10.0.0.5 is refused like the address. DNS can
change after the check; the HTTP client re-checks before each step (with a short cache) to narrow that
window, but it does not pin the connection to the checked address.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from typing import Any
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


@dataclass(frozen=True)
class RewardURLPolicy:
    """Which reward URLs a job may call. The default calls public hosts only, any of them."""

    allow_private: bool = False  # loopback and private ranges too (never link-local or metadata)
    allowlist: tuple[str, ...] | None = None  # hosts (``name`` or ``*.suffix``) allowed; None: any

    @classmethod
    def local(cls) -> RewardURLPolicy:
        """A run on one's own machine (``rlft train --local``, tests, benchmarks): private hosts allowed."""
        return cls(allow_private=True)

    @classmethod
    def from_settings(cls, settings: Any) -> RewardURLPolicy:
        """The operator's policy: ``RLFT_ALLOW_PRIVATE_REWARD_URLS`` and ``RLFT_REWARD_URL_ALLOWLIST``
        (empty: no allowlist)."""
        return cls(settings.allow_private_reward_urls, tuple(settings.reward_url_allowlist) or None)

    def check(self, url: str) -> None:
        """Raise ``RewardURLForbidden`` saying why, unless a job may call ``url``."""
        check_reward_url(url, self.allow_private, None if self.allowlist is None else list(self.allowlist))

    def to_json(self) -> str:
        return json.dumps({"allow_private": self.allow_private, "allowlist": self.allowlist})

    @classmethod
    def from_json(cls, text: str) -> RewardURLPolicy:
        data = json.loads(text)
        allowlist = data.get("allowlist")
        return cls(bool(data.get("allow_private", False)), None if allowlist is None else tuple(allowlist))


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
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHost(f"reward URL host {host!r} does not resolve: {exc}") from exc
    # getaddrinfo gives "fe80::1%eth0" for scoped addresses; the scope does not change the verdict.
    return sorted({ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}, key=str)


# RFC 6052 section 2.2: where the 32 bits of the IPv4 address sit (byte ranges of the IPv6 address) for
# each prefix length; byte 8 (bits 64-71) is always zero and skipped.
_RFC6052_BYTES = {
    32: (range(4, 8),),
    40: (range(5, 8), range(9, 10)),
    48: (range(6, 8), range(9, 11)),
    56: (range(7, 8), range(9, 12)),
    64: (range(9, 13),),
    96: (range(12, 16),),
}
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: not globally reachable
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291, deprecated, still routed by some stacks
SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 IPv4-translated
TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380
# Forms whose own prefix is not globally reachable, whatever they embed (Python 3.11 calls the first global).
_NEVER_PUBLIC = ((NAT64_LOCAL_USE, "local-use NAT64"), (TEREDO, "Teredo"))


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through a translator or tunnel (empty: none)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address in TEREDO and address.teredo is not None:
        return [address.teredo[1]]  # the client, the host the traffic is delivered to
    packed = address.packed
    if address in NAT64_WELL_KNOWN or address in SIIT:
        return [_rfc6052(packed, 96)]
    if address in IPV4_COMPATIBLE and int(address) > 1:  # :: and ::1 are IPv6's own
        return [_rfc6052(packed, 96)]
    if address in NAT64_LOCAL_USE:
        # The operator picks the prefix length inside the /48: every position that fits could be meant
        # (an all-zero one embeds nothing; the prefix itself is never public, see _NEVER_PUBLIC).
        candidates = dict.fromkeys(_rfc6052(packed, n) for n in (96, 64, 56, 48))
        return [a for a in candidates if int(a)]
    return []


def _rfc6052(packed: bytes, prefix_len: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(bytes(packed[i] for part in _RFC6052_BYTES[prefix_len] for i in part))


def _check_address(host: str, address: IPAddress, allow_private: bool) -> None:
    never_public = next((name for net, name in _NEVER_PUBLIC if address in net), None)
    if never_public and not allow_private:
        raise RewardURLForbidden(
            f"reward URL host {host!r} is a {never_public} address ({address}), which is never public; "
            "this server only calls public reward endpoints (private addresses are allowed for local runs, "
            "or by the operator's setting)"
        )
    # Judged by the IPv4 host it reaches: [64:ff9b::7f00:1] is 127.0.0.1 behind a translator.
    inner = embedded_ipv4(address)
    for v4 in inner:
        _check_one(host, v4, allow_private, via=address)
    if not inner:
        _check_one(host, address, allow_private)


def _check_one(host: str, address: IPAddress, allow_private: bool, via: IPAddress | None = None) -> None:
    if via is not None:
        where = f"reward URL host {host!r} reaches {address} (embedded in {via}), which"
    elif host == str(address):
        where = f"reward URL host {host!r}"
    else:
        where = f"reward URL host {host!r} resolves to {address}, which"
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
