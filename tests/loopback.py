"""Test servers talk to 127.0.0.1 only: a free loopback port, and one guarded `urlopen` that
refuses any other host before a request leaves the process (no LAN, no internet)."""

import socket
import urllib.parse
import urllib.request

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def loopback_url(url: str) -> str:
    host = urllib.parse.urlsplit(url).hostname
    if host != LOOPBACK:
        raise AssertionError(f"{url}: tests talk to {LOOPBACK} only")
    return url


def urlopen(url_or_request, timeout: float):
    loopback_url(getattr(url_or_request, "full_url", url_or_request))
    return urllib.request.urlopen(url_or_request, timeout=timeout)
