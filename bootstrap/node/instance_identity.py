"""Where the CSR approver checks that a node is who it says: an instance of this cluster.

Two sources, one question (`lookup(name)`: the instance of that name, its pool, state,
addresses and DNS names): the lab's record of its launched hosts (a JSON file the lab
rewrites), and EC2 `DescribeInstances` signed with Signature Version 4 from the instance
role's credentials (IMDSv2). Standard library only: shipped beside the approver
(bootstrap.node.csr_approver) to the control-plane hosts.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import NamedTuple, Protocol

EC2_VERSION = "2016-11-15"


class LookupFailed(Exception):
    """An identity or node lookup that could not be made now: retry, never deny on it."""


@dataclass(frozen=True)
class Instance:
    name: str
    pool: str
    state: str
    addresses: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()


class Identity(Protocol):
    def lookup(self, name: str) -> Instance | None: ...


class LabIdentity:
    """The lab's instance record, a JSON file that the lab rewrites; re-read when it changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._instances: dict[str, Instance] = {}

    def lookup(self, name: str) -> Instance | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._instances = None, {}
            return None
        if (st.st_mtime_ns, st.st_size, st.st_ino) != self._stamp:
            try:
                with open(self.path, encoding="utf-8") as handle:
                    records = json.load(handle)["instances"]
                self._instances = {r["name"]: Instance(
                    r["name"], r["pool"], r["state"], tuple(r.get("addresses") or ()),
                    tuple(r.get("dns_names") or ())) for r in records}
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise LookupFailed(f"{self.path}: unreadable instance record: {err!r}") from err
            self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        return self._instances.get(name)


class Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: str | None = None
    expires: float | None = None


def canonical_request(method: str, url: str, headers: dict[str, str],
                      body: bytes) -> tuple[str, str]:
    """SigV4's canonical request for these exact headers, and its SignedHeaders list."""
    parts = urllib.parse.urlsplit(url)
    quote = lambda text: urllib.parse.quote(text, safe="-_.~")  # noqa: E731
    query = "&".join(sorted(f"{quote(k)}={quote(v)}" for k, v in
                            urllib.parse.parse_qsl(parts.query, keep_blank_values=True)))
    canonical = {k.lower().strip(): " ".join(v.split()) for k, v in headers.items()}
    signed = ";".join(sorted(canonical))
    lines = "".join(f"{k}:{canonical[k]}\n" for k in sorted(canonical))
    path = urllib.parse.quote(parts.path or "/", safe="/-_.~")
    return "\n".join([method, path, query, lines, signed, hashlib.sha256(body).hexdigest()]), signed


def sign_v4(method: str, url: str, headers: dict[str, str], body: bytes, creds: Credentials,
            region: str, service: str, now: datetime) -> dict[str, str]:
    """`headers` plus host, x-amz-date, the session token and the SigV4 Authorization."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    headers = {**headers, "host": urllib.parse.urlsplit(url).netloc, "x-amz-date": amz_date}
    if creds.token:
        headers["x-amz-security-token"] = creds.token
    canonical, signed = canonical_request(method, url, headers, body)
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + creds.secret_key).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    return headers


def _http(url: str, method: str, headers: dict[str, str], body: bytes | None = None,
          timeout: float = 10.0) -> tuple[int, bytes]:
    """One plain request on a fresh connection (EC2 and IMDS are asked rarely)."""
    parts = urllib.parse.urlsplit(url)
    connection_type = (http.client.HTTPSConnection if parts.scheme == "https"
                       else http.client.HTTPConnection)
    connection = connection_type(parts.netloc, timeout=timeout)
    try:
        connection.request(method, parts.path or "/", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as err:
        raise LookupFailed(f"{method} {url}: {err!r}") from err
    finally:
        connection.close()


class Ec2Identity:
    """EC2 DescribeInstances for this cluster's nodes, by private DNS name only: AWS assigns
    it, one per instance, while a Name tag is anyone's to set (and an auto scaling group
    gives all its instances the same one)."""

    def __init__(self, region: str, cluster: str, clock: Callable[[], float] = time.time):
        self.region, self.cluster, self.clock = region, cluster, clock
        self.endpoint = os.environ.get("MZK_EC2_ENDPOINT") or f"https://ec2.{region}.amazonaws.com/"
        self.imds = (os.environ.get("MZK_IMDS_ENDPOINT") or "http://169.254.169.254").rstrip("/")
        self._cached: Credentials | None = None

    def lookup(self, name: str) -> Instance | None:
        found = list(self._describe({"private-dns-name": name, "tag:mzk:cluster": self.cluster,
                                     "tag:mzk:role": "node"}))
        running = [instance for instance in found if instance.state == "running"]
        if len(running) > 1:
            raise LookupFailed(f"{len(running)} running instances named {name}")
        return (running or found)[0] if found else None

    def credentials(self) -> Credentials:
        """The environment's keys, else the instance role's, cached until 5 min before expiry."""
        env = os.environ
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            return Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                               env.get("AWS_SESSION_TOKEN") or None)
        if self._cached and (self._cached.expires or 0) - 300 > self.clock():
            return self._cached
        status, token = _http(f"{self.imds}/latest/api/token", "PUT",
                              {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
        headers = {"X-aws-ec2-metadata-token": token.decode()}
        base = f"{self.imds}/latest/meta-data/iam/security-credentials/"
        status, roles = _http(base, "GET", headers) if status == 200 else (status, b"")
        role = roles.decode().split()[0] if status == 200 and roles.strip() else ""
        status, body = _http(base + role, "GET", headers) if role else (404, b"")
        try:
            data = json.loads(body) if status == 200 else {}
            expires = datetime.strptime(data["Expiration"], "%Y-%m-%dT%H:%M:%SZ")
            self._cached = Credentials(data["AccessKeyId"], data["SecretAccessKey"], data["Token"],
                                       expires.replace(tzinfo=timezone.utc).timestamp())  # noqa: UP017
        except (ValueError, KeyError) as err:
            raise LookupFailed("no AWS credentials in the environment or from the "
                               f"instance role ({self.imds}): {err!r}") from err
        return self._cached

    def _describe(self, filters: dict[str, str]) -> Iterator[Instance]:
        params = {"Action": "DescribeInstances", "Version": EC2_VERSION}
        for index, (key, value) in enumerate(sorted(filters.items()), 1):
            params[f"Filter.{index}.Name"], params[f"Filter.{index}.Value.1"] = key, value
        for _ in range(20):  # pages; a handful of instances share a name at most
            body = urllib.parse.urlencode(params).encode()
            headers = sign_v4("POST", self.endpoint, {
                "content-type": "application/x-www-form-urlencoded; charset=utf-8"}, body,
                self.credentials(), self.region, "ec2", datetime.fromtimestamp(
                    self.clock(), timezone.utc))  # noqa: UP017
            status, reply = _http(self.endpoint, "POST", headers, body)
            try:
                root = ET.fromstring(reply)  # noqa: S314 - EC2's own reply over TLS, no DTD
            except ET.ParseError as err:
                raise LookupFailed(f"EC2 DescribeInstances: HTTP {status}, not XML") from err
            if status != 200:
                code, message = root.findtext(".//{*}Code"), root.findtext(".//{*}Message")
                raise LookupFailed(f"EC2 DescribeInstances: HTTP {status} {code}: {message}")
            for item in root.iterfind("{*}reservationSet/{*}item/{*}instancesSet/{*}item"):
                yield _ec2_instance(item)
            next_token = root.findtext("{*}nextToken")
            if not next_token:
                return
            params["NextToken"] = next_token


def _ec2_instance(item: ET.Element) -> Instance:
    tags = {tag.findtext("{*}key"): tag.findtext("{*}value") or ""
            for tag in item.iterfind("{*}tagSet/{*}item")}
    addresses = [item.findtext("{*}privateIpAddress") or ""]
    for path in ("{*}privateIpAddressesSet/{*}item/{*}privateIpAddress",
                 "{*}ipv6AddressesSet/{*}item/{*}ipv6Address"):
        addresses += [e.text or "" for e in item.iterfind("{*}networkInterfaceSet/{*}item/" + path)]
    dns_name = item.findtext("{*}privateDnsName") or ""
    return Instance(tags.get("Name") or dns_name, tags.get("mzk:pool", ""),
                    item.findtext("{*}instanceState/{*}name") or "unknown",
                    tuple(dict.fromkeys(a for a in addresses if a)),
                    (dns_name,) if dns_name else ())


# ---- the rules -----------------------------------------------------------------------------


def identity_from(spec: str) -> Identity:
    kind, _, rest = spec.partition(":")
    region, _, cluster = rest.partition(":")
    if kind == "lab" and rest:
        return LabIdentity(rest)
    if kind == "ec2" and region and cluster:
        return Ec2Identity(region, cluster)
    raise ValueError(f"--identity {spec!r} must be lab:PATH or ec2:REGION:CLUSTER")
