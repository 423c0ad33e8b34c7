"""A stand-in for a node's kubelet until nodes run real ones (a test fixture, run inside a lab
host's namespaces): HTTPS on the kubelet port with the node's serving certificate, a client
certificate signed by the cluster CA required; and, optionally, a plain HTTP server on
another port (the service proxy's destination). Each answers `<name> <path>`.

    python3 fake_kubelet.py NAME ADDRESS CERT KEY CA [HTTP_PORT]
"""

from __future__ import annotations

import http.server
import ssl
import sys
import threading


def handler(name: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Answer(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the http.server interface
            body = f"{name} {self.path.split('?')[0]}".encode()
            # One write (one TLS record, one segment), as a real server answers a small
            # request: a second small write would wait on the peer's delayed ACK (Nagle).
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Answer


def main() -> None:
    name, address, cert, key, ca = sys.argv[1:6]
    http_port = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tls.load_verify_locations(ca)
    tls.verify_mode = ssl.CERT_REQUIRED
    kubelet = http.server.ThreadingHTTPServer((address, 10250), handler(name))
    kubelet.socket = tls.wrap_socket(kubelet.socket, server_side=True)
    if http_port:
        plain = http.server.ThreadingHTTPServer((address, http_port), handler(name))
        threading.Thread(target=plain.serve_forever, daemon=True).start()
    print("ready", flush=True)
    kubelet.serve_forever()


if __name__ == "__main__":
    main()
