"""The API server client our host programs share: one keep-alive HTTPS connection,
authenticated by a client certificate; watches on connections of their own; and a cache of
one collection kept by a list and then a watch (ListWatch).

The kubelet rotates its client credential (`kubelet-client-current.pem`, certificate and key
in one file, a symlink swapped to a new file), so a program holding it must not keep the
first certificate for ever: before each request the client compares the files' identity
(inode, size, modification time) with the ones it loaded and, when they changed, builds a
new TLS context and drops its connection. A half-written file keeps the old context until
the next request.

A companion module (COMPANIONS of bootstrap.node.csr_approver and bootstrap.node.pod_network):
shipped beside those programs as `kube_api.py` and run by the host's python3 (3.9+):
standard library only, no project imports.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

WATCH_SECONDS = 300  # the server ends a watch after this; the client then watches again
LIST_PAGE = 500  # objects per list page: bounds the memory a list of 5,000 Nodes takes
MAX_BACKOFF = 30.0


class ApiUnavailable(Exception):
    """The API server could not answer now (transport error, 429, 5xx): retry, never act
    on it as on an answer."""


class WatchExpired(ApiUnavailable):
    """The watch's resource version is too old (410 Gone): list again."""


def _file_identity(path: str) -> tuple[int, int, int]:
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class KubeApi:
    """One keep-alive HTTPS connection to the API server, authenticated by client cert."""

    # What node_exists raises when it cannot tell; a program sets its own retry type.
    unavailable: type[Exception] = ApiUnavailable

    def __init__(self, server: str, ca: str, cert: str, key: str, timeout: float = 10.0):
        parts = urllib.parse.urlsplit(server)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"--server {server!r} must be an https:// URL")
        self.host, self.port, self.timeout = parts.hostname, parts.port or 443, timeout
        self.ca, self.cert, self.key = ca, cert, key
        self.loaded = self._identities()
        self.context = self._new_context()
        self.connection: http.client.HTTPSConnection | None = None

    def _identities(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(_file_identity(path) for path in (self.cert, self.key))

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        context.load_cert_chain(self.cert, self.key)
        return context

    def reload_if_changed(self) -> bool:
        """A new TLS context when the certificate or key file changed since it was loaded;
        True when it did. Unreadable or half-written files keep the current one."""
        try:
            current = self._identities()
            if current == self.loaded:
                return False
            context = self._new_context()
        except (OSError, ssl.SSLError):
            return False
        self.context, self.loaded = context, current
        self.close()
        return True

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        self.reload_if_changed()
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "Content-Type": content_type}
        for attempt in (1, 2):  # a kept-alive connection the server closed gets one retry
            reused = self.connection is not None
            if self.connection is None:
                self.connection = http.client.HTTPSConnection(
                    self.host, self.port, context=self.context, timeout=self.timeout)
            try:
                self.connection.request(method, path, body=data, headers=headers)
                response = self.connection.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2 or not reused:
                    raise
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, None

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def get_json(self, path: str) -> dict[str, Any]:
        """A GET that must answer 200 with a JSON object; anything else is ApiUnavailable."""
        try:
            status, answer = self.request("GET", path)
        except (OSError, http.client.HTTPException) as err:
            raise ApiUnavailable(f"GET {path}: {err!r}") from err
        if status != 200 or not isinstance(answer, dict):
            raise ApiUnavailable(f"GET {path}: HTTP {status}" + _message(answer))
        return answer

    def watch(self, path: str, resource_version: str,
              seconds: int = WATCH_SECONDS) -> Iterator[dict[str, Any]]:
        """The events of one watch from `resource_version` (with bookmarks), on a connection
        of its own, until the server ends it. ApiUnavailable on errors, WatchExpired when
        the version is too old."""
        self.reload_if_changed()
        query = urllib.parse.urlencode({"watch": "1", "resourceVersion": resource_version,
                                        "allowWatchBookmarks": "true",
                                        "timeoutSeconds": str(seconds)})
        connection = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                                 timeout=seconds + 30)
        try:
            try:
                connection.request("GET", f"{path}?{query}",
                                   headers={"Accept": "application/json"})
                response = connection.getresponse()
                if response.status != 200:
                    error = WatchExpired if response.status == 410 else ApiUnavailable
                    raise error(f"watch {path}: HTTP {response.status}"
                                + _message(response.read(65536)))
                while line := response.readline():
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        code = (event.get("object") or {}).get("code")
                        error = WatchExpired if code == 410 else ApiUnavailable
                        raise error(f"watch {path}: {event.get('object')}")
                    yield event
            except (OSError, http.client.HTTPException, ValueError) as err:
                raise ApiUnavailable(f"watch {path}: {err!r}") from err
        finally:
            connection.close()

    def node_exists(self, name: str) -> bool:
        """Only a 404 means "no such node": any other answer counts as registered (fail
        closed), except 429/5xx and transport errors, which are retried."""
        try:
            status, _ = self.request("GET", "/api/v1/nodes/" + urllib.parse.quote(name, safe=""))
        except (OSError, http.client.HTTPException) as err:
            raise self.unavailable(f"GET node {name}: {err!r}") from err
        if status == 429 or status >= 500:
            raise self.unavailable(f"GET node {name}: HTTP {status}")
        return status != 404


class ListWatch:
    """The objects of one collection, each reduced to what a program needs, kept by one
    paged list and then a watch (what 5,000 agents cost the API server is one watch each,
    not a list per pass). Through API errors the last good objects are kept, so an outage
    never looks like deletions; errors are retried with a backoff of up to MAX_BACKOFF."""

    def __init__(self, api: KubeApi, path: str, reduce: Callable[[dict[str, Any]], Any],
                 log: Callable[[str], None]):
        self.api, self.path, self.reduce, self.log = api, path, reduce, log
        self.items: dict[str, Any] | None = None  # None until the first list
        self.version, self.error = "", ""
        self.changed, self.lock, self.stopping = threading.Event(), threading.Lock(), \
            threading.Event()

    def list_all(self) -> tuple[dict[str, Any], str]:
        """Every object, reduced, and the list's resource version."""
        items: dict[str, Any] = {}
        token = ""
        while True:
            query = {"limit": str(LIST_PAGE), **({"continue": token} if token else {})}
            page = self.api.get_json(f"{self.path}?{urllib.parse.urlencode(query)}")
            for item in page.get("items") or []:
                items[_key(item)] = self.reduce(item)
            meta = page.get("metadata") or {}
            token = meta.get("continue", "")
            if not token:
                return items, meta.get("resourceVersion", "")

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"watch {self.path}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """End run() at its next event or retry (a watch in progress ends with the server's)."""
        self.stopping.set()

    def run(self) -> None:
        backoff = 0.0
        while not self.stopping.is_set():
            try:
                if not self.version:
                    items, self.version = self.list_all()
                    self._store(items)
                started = time.monotonic()
                for event in self.api.watch(self.path, self.version):
                    if self.stopping.is_set():
                        return
                    self._apply(event)
                backoff = 0.0
                if time.monotonic() - started < 1.0:  # a server ending watches at once
                    self.stopping.wait(1.0)
            except WatchExpired:
                self.version = ""
                self.stopping.wait(1.0)  # never a tight list loop against the API server
            except ApiUnavailable as err:
                with self.lock:
                    self.error = str(err)
                self.api.close()
                backoff = min(max(2 * backoff, 1.0), MAX_BACKOFF)
                self.log(f"event=api-error retry_in={backoff:.0f}s error={json.dumps(str(err))}")
                self.stopping.wait(backoff)

    def _apply(self, event: dict[str, Any]) -> None:
        item = event.get("object") or {}
        self.version = (item.get("metadata") or {}).get("resourceVersion") or self.version
        if event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: only the version moves
        key = _key(item)
        with self.lock:
            items = self.items if self.items is not None else {}
            before = items.get(key)
            if event["type"] == "DELETED":
                items.pop(key, None)
                after = None
            else:
                items[key] = after = self.reduce(item)
            self.items, self.error = items, ""
            if after != before:
                self.changed.set()

    def _store(self, items: dict[str, Any]) -> None:
        with self.lock:
            if items != self.items:
                self.changed.set()
            self.items, self.error = items, ""

    def snapshot(self) -> tuple[dict[str, Any] | None, str]:
        """The objects (None before the first list) and the last error ("" when healthy)."""
        with self.lock:
            return (None if self.items is None else dict(self.items)), self.error


def _message(answer: Any) -> str:
    """The API's Status message as ": <message>", from a decoded or raw answer; "" if none."""
    if isinstance(answer, bytes):
        try:
            answer = json.loads(answer)
        except ValueError:
            return ""
    message = answer.get("message") if isinstance(answer, dict) else None
    return f": {message}" if isinstance(message, str) and message else ""


def _key(item: dict[str, Any]) -> str:
    meta = item.get("metadata") or {}
    return f"{meta['namespace']}/{meta.get('name', '')}" if meta.get("namespace") \
        else meta.get("name", "")
