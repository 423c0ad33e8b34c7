"""Who a joining node is: its cloud-signed identity, and the instance that identity names.

A node proves which instance it is with the document its cloud signs for it (AWS: the
instance identity document and its RSA signature from IMDSv2; the lab: the same document
signed with the lab's key), carried as one bootstrap token (`identity_token`). We verify the
signature against trusted keys (a small PKCS#1 v1.5 check over the DER reader's (n, e)),
then look the instance up by its ID in one of two sources: the lab's record of its launched
hosts (a JSON file the lab rewrites) or EC2 `DescribeInstances` signed with Signature
Version 4 from the instance role's credentials (IMDSv2), batched (many `InstanceId.N` per
call) and cached for a few seconds, so thousands of joining nodes cost few calls. A node's
name and addresses come only from the instance itself (its private DNS name and private
IPs), never from tags: a tag is anyone's to set, and a pool's instances share their Name.
Standard library only: shipped beside the approver (bootstrap.node.csr_approver) to the
control-plane hosts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import threading
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import NamedTuple, Protocol

try:  # in the project
    from bootstrap.node.asn1_der import (
        DECODE_ERRORS,
        PublicKey,
        certificate_key,
        pem_blocks,
        public_key,
    )
except ImportError:  # on a host: shipped beside the approver
    from asn1_der import (  # type: ignore[no-redef]
        DECODE_ERRORS,
        PublicKey,
        certificate_key,
        pem_blocks,
        public_key,
    )

EC2_VERSION = "2016-11-15"
TOKEN_PREFIX = "mzk-iid."  # noqa: S105 - a marker, not a secret
MAX_TOKEN_LENGTH = 16384  # a document is ~500 bytes; refuse anything absurd before decoding
LAB_REGION, LAB_ACCOUNT = "lab", "000000000000"
INSTANCE_ID = re.compile(r"i-[0-9a-f]{8}(?:[0-9a-f]{9})?")
BATCH = 100  # instance IDs per DescribeInstances call
CACHE_SECONDS = 10.0  # a found instance's state is trusted this long
MISSING_SECONDS = 3.0  # a new instance may take a moment to show in DescribeInstances
THROTTLE_SECONDS = 5.0  # after RequestLimitExceeded, no call for this long
# DigestInfo for SHA-256 (RFC 8017, 9.2 note 1), before the 32-byte digest.
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


class LookupFailed(Exception):
    """An identity or node lookup that could not be made now: retry, never deny on it."""


@dataclass(frozen=True)
class Instance:
    name: str  # the private DNS name: the node's name
    pool: str
    state: str
    addresses: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    instance_id: str = ""
    account: str = ""


class Identity(Protocol):
    region: str

    def lookup(self, name: str) -> Instance | None: ...

    def by_id(self, instance_id: str) -> Instance | None: ...

    def prefetch(self, instance_ids: Iterable[str]) -> None: ...


# ---- the identity token and its signature ---------------------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def identity_token(document: bytes, signature: bytes) -> str:
    """`mzk-iid.<document>.<signature>`, each base64url without padding."""
    return f"{TOKEN_PREFIX}{_b64url(document)}.{_b64url(signature)}"


def parse_identity_token(token: str) -> tuple[bytes, bytes]:
    """(document, signature) of a token `identity_token` made; ValueError for anything else
    (one spelling only: a token re-encoded differently is not the same token)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
        raise ValueError("not an instance identity token")
    parts = token[len(TOKEN_PREFIX):].split(".")
    if len(parts) != 2 or not all(re.fullmatch(r"[A-Za-z0-9_-]+", part) for part in parts):
        raise ValueError("an instance identity token has two base64url parts")
    try:
        document, signature = (base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in parts)
    except DECODE_ERRORS as err:
        raise ValueError(f"an instance identity token that does not decode: {err}") from err
    if identity_token(document, signature) != token:
        raise ValueError("an instance identity token not in its one spelling")
    return document, signature


def load_trust(pem: bytes) -> list[PublicKey]:
    """The RSA keys of a trust file: CERTIFICATE and PUBLIC KEY blocks (others are an error,
    so a misplaced private key or a DSA certificate is noticed, not ignored)."""
    keys = []
    try:
        blocks = pem_blocks(pem)
    except DECODE_ERRORS as err:
        raise ValueError(f"a PEM block that does not decode: {err}") from err
    for label, der in blocks:
        if label not in ("CERTIFICATE", "PUBLIC KEY"):
            raise ValueError(f"a {label} block: only CERTIFICATE and PUBLIC KEY are trusted")
        try:
            key = certificate_key(der) if label == "CERTIFICATE" else public_key(der)
        except DECODE_ERRORS as err:
            raise ValueError(f"a {label} that does not parse: {err}") from err
        if key.algorithm != "RSA":
            raise ValueError(f"a {label} with {key.describe()}: identity signatures are RSA")
        keys.append(key)
    if not keys:
        raise ValueError("no CERTIFICATE or PUBLIC KEY block")
    return keys


def load_trust_file(path: str) -> list[PublicKey]:
    try:
        with open(path, "rb") as handle:
            return load_trust(handle.read())
    except (OSError, ValueError) as err:
        raise ValueError(f"--identity-trust {path}: {err}") from err


def rsa_sha256_verifies(key: PublicKey, message: bytes, signature: bytes) -> bool:
    """RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017, 8.2.2): the signature raised to e mod n must
    be exactly the encoding we build from the message's digest, padding and all."""
    size = (key.modulus.bit_length() + 7) // 8
    digest_info = SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    if key.algorithm != "RSA" or len(signature) != size or size < len(digest_info) + 11:
        return False
    value = int.from_bytes(signature, "big")
    if value >= key.modulus:
        return False
    encoded = pow(value, key.exponent, key.modulus).to_bytes(size, "big")
    expected = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
    return hmac.compare_digest(encoded, expected)


def signature_verifies(document: bytes, signature: bytes, keys: Iterable[PublicKey]) -> bool:
    return any(rsa_sha256_verifies(key, document, signature) for key in keys)


# ---- the sources ----------------------------------------------------------------------------

class LabIdentity:
    """The lab's instance record (interface: `{"instances": [{"instance_id", "name", "pool",
    "zone", "state", "addresses", "dns_names", "account"}]}`), a JSON file the lab rewrites;
    re-read when it changes."""

    region = LAB_REGION

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._by_name: dict[str, Instance] = {}
        self._by_id: dict[str, Instance] = {}
        self._lock = threading.Lock()  # the approver's loop and its webhook share a source

    def lookup(self, name: str) -> Instance | None:
        with self._lock:
            self._refresh()
            return self._by_name.get(name)

    def by_id(self, instance_id: str) -> Instance | None:
        with self._lock:
            self._refresh()
            return self._by_id.get(instance_id)

    def prefetch(self, instance_ids: Iterable[str]) -> None:
        """Nothing to batch: one file holds every instance."""

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._by_name, self._by_id = None, {}, {}
            return
        if (st.st_mtime_ns, st.st_size, st.st_ino) == self._stamp:
            return
        try:
            with open(self.path, encoding="utf-8") as handle:
                records = json.load(handle)["instances"]
            instances = [Instance(
                r["name"], r["pool"], r["state"], tuple(r.get("addresses") or ()),
                tuple(r.get("dns_names") or ()), r.get("instance_id") or "",
                r.get("account") or LAB_ACCOUNT) for r in records]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise LookupFailed(f"{self.path}: unreadable instance record: {err!r}") from err
        self._by_name = {i.name: i for i in instances}
        self._by_id = {i.instance_id: i for i in instances if i.instance_id}
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)


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


class Ec2Error(LookupFailed):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"EC2 DescribeInstances: HTTP {status} {code}: {message}")
        self.code, self.message = code, message


class Ec2Identity:
    """EC2 DescribeInstances for this cluster's nodes (tags `mzk:cluster`, `mzk:role=node`;
    the pool from `mzk:pool`), by instance ID or by private DNS name, which AWS assigns one
    per instance. Look-ups by ID are batched (`prefetch`) and cached for CACHE_SECONDS."""

    def __init__(self, region: str, cluster: str, clock: Callable[[], float] = time.time):
        self.region, self.cluster, self.clock = region, cluster, clock
        self.endpoint = os.environ.get("MZK_EC2_ENDPOINT") or f"https://ec2.{region}.amazonaws.com/"
        self.imds = (os.environ.get("MZK_IMDS_ENDPOINT") or "http://169.254.169.254").rstrip("/")
        self._cached: Credentials | None = None
        self._by_id: dict[str, tuple[float, Instance | None]] = {}  # id -> (until, instance)
        self._by_name: dict[str, tuple[float, Instance | None]] = {}
        self._throttled_until = 0.0
        self._lock = threading.RLock()  # the approver's loop and its webhook share a source
        self.calls = 0  # DescribeInstances requests made (pages included)

    def _tag_filters(self) -> dict[str, str]:
        return {"tag:mzk:cluster": self.cluster, "tag:mzk:role": "node"}

    def lookup(self, name: str) -> Instance | None:
        with self._lock:
            until, cached = self._by_name.get(name, (0.0, None))
            if until > self.clock():
                return cached
            found = list(self._describe({"private-dns-name": name, **self._tag_filters()}))
            running = [instance for instance in found if instance.state == "running"]
            if len(running) > 1:
                raise LookupFailed(f"{len(running)} running instances named {name}")
            instance = (running or found)[0] if found else None
            self._by_name[name] = (self.clock() + (CACHE_SECONDS if instance else
                                                   MISSING_SECONDS), instance)
            return instance

    def by_id(self, instance_id: str) -> Instance | None:
        with self._lock:
            self.prefetch([instance_id])
            return self._by_id[instance_id][1]

    def prefetch(self, instance_ids: Iterable[str]) -> None:
        """Look up every ID not freshly cached, BATCH per call; an ID EC2 does not know, or
        one of another cluster or role, is cached as absent (briefly)."""
        with self._lock:
            now = self.clock()
            wanted = sorted({i for i in instance_ids if self._by_id.get(i, (0.0,))[0] <= now})
            for instance_id in [i for i in wanted if not INSTANCE_ID.fullmatch(i)]:
                self._by_id[instance_id] = (now + CACHE_SECONDS, None)  # never an instance
            wanted = [i for i in wanted if INSTANCE_ID.fullmatch(i)]
            for start in range(0, len(wanted), BATCH):
                self._fetch_ids(wanted[start:start + BATCH])

    def _fetch_ids(self, ids: list[str]) -> None:
        found: dict[str, Instance] = {}
        missing: set[str] = set()
        while ids:
            try:
                found.update((i.instance_id, i) for i in self._describe(self._tag_filters(), ids))
                break
            except Ec2Error as err:  # one unknown ID fails the call: drop those it names
                named = set(INSTANCE_ID.findall(err.message)) & set(ids)
                if err.code != "InvalidInstanceID.NotFound" or not named:
                    raise
                missing |= named
                ids = [i for i in ids if i not in named]
        now = self.clock()
        for instance_id in ids:
            self._by_id[instance_id] = (now + CACHE_SECONDS, found[instance_id]) \
                if instance_id in found else (now + MISSING_SECONDS, None)
        for instance_id in missing:
            self._by_id[instance_id] = (now + MISSING_SECONDS, None)

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

    def _describe(self, filters: dict[str, str], ids: Iterable[str] = ()) -> Iterator[Instance]:
        if self._throttled_until > self.clock():
            raise LookupFailed("EC2 DescribeInstances: throttled, waiting before asking again")
        params = {"Action": "DescribeInstances", "Version": EC2_VERSION}
        for index, instance_id in enumerate(ids, 1):
            params[f"InstanceId.{index}"] = instance_id
        for index, (key, value) in enumerate(sorted(filters.items()), 1):
            params[f"Filter.{index}.Name"], params[f"Filter.{index}.Value.1"] = key, value
        for _ in range(20):  # pages; a handful of instances share a name at most
            body = urllib.parse.urlencode(params).encode()
            headers = sign_v4("POST", self.endpoint, {
                "content-type": "application/x-www-form-urlencoded; charset=utf-8"}, body,
                self.credentials(), self.region, "ec2", datetime.fromtimestamp(
                    self.clock(), timezone.utc))  # noqa: UP017
            self.calls += 1
            status, reply = _http(self.endpoint, "POST", headers, body)
            try:
                root = ET.fromstring(reply)  # noqa: S314 - EC2's own reply over TLS, no DTD
            except ET.ParseError as err:
                raise LookupFailed(f"EC2 DescribeInstances: HTTP {status}, not XML") from err
            if status != 200:
                code = root.findtext(".//{*}Code") or ""
                if code == "RequestLimitExceeded":
                    self._throttled_until = self.clock() + THROTTLE_SECONDS
                raise Ec2Error(status, code, root.findtext(".//{*}Message") or "")
            for reservation in root.iterfind("{*}reservationSet/{*}item"):
                owner = reservation.findtext("{*}ownerId") or ""
                for item in reservation.iterfind("{*}instancesSet/{*}item"):
                    yield _ec2_instance(item, owner)
            next_token = root.findtext("{*}nextToken")
            if not next_token:
                return
            params["NextToken"] = next_token


def _ec2_instance(item: ET.Element, account: str = "") -> Instance:
    """An instance as EC2 describes it. Its name is its private DNS name, and only that:
    the Name tag (which an auto scaling group gives every instance of a pool alike) is never
    a name the instance owns; only the pool comes from a tag (mzk:pool)."""
    tags = {tag.findtext("{*}key"): tag.findtext("{*}value") or ""
            for tag in item.iterfind("{*}tagSet/{*}item")}
    addresses = [item.findtext("{*}privateIpAddress") or ""]
    for path in ("{*}privateIpAddressesSet/{*}item/{*}privateIpAddress",
                 "{*}ipv6AddressesSet/{*}item/{*}ipv6Address"):
        addresses += [e.text or "" for e in item.iterfind("{*}networkInterfaceSet/{*}item/" + path)]
    dns_name = item.findtext("{*}privateDnsName") or ""
    return Instance(dns_name, tags.get("mzk:pool", ""),
                    item.findtext("{*}instanceState/{*}name") or "unknown",
                    tuple(dict.fromkeys(a for a in addresses if a)),
                    (dns_name,) if dns_name else (), item.findtext("{*}instanceId") or "",
                    account)


# ---- the rules -----------------------------------------------------------------------------


def identity_from(spec: str) -> Identity:
    kind, _, rest = spec.partition(":")
    region, _, cluster = rest.partition(":")
    if kind == "lab" and rest:
        return LabIdentity(rest)
    if kind == "ec2" and region and cluster:
        return Ec2Identity(region, cluster)
    raise ValueError(f"--identity {spec!r} must be lab:PATH or ec2:REGION:CLUSTER")
