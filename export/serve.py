"""``python -m export.serve FOLDER``: serve the web page (``--format web``) to a browser or a phone.

Only FOLDER is served: paths that leave it (``..``, symlinks out) are 404,
and there are no directory listings. ``127.0.0.1`` by default; ``--host
0.0.0.0`` makes it reachable from a phone on the same Wi-Fi and prints the
URL and a QR code. Phones allow the live camera only over https (or on
localhost): ``--https`` serves with a self-signed certificate, which the
browser warns about once ("Your connection is not private": Advanced, then
Proceed). The photo button works over plain http.
"""

import datetime
import http.server
import ipaddress
import os
import signal
import socket
import ssl
import sys

from nin_keras.cli import OneLineParser, run_cli
from nin_keras.errors import NinError

#: Types browsers insist on: WebAssembly streaming compilation needs application/wasm, modules a JS type.
MIME_TYPES = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
              ".tflite": "application/octet-stream", ".json": "application/json", ".html": "text/html",
              ".css": "text/css", ".txt": "text/plain; charset=utf-8", ".png": "image/png"}


class ServeError(NinError):
    """The folder cannot be served."""


def build_parser():
    parser = OneLineParser(prog="python -m export.serve", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the web folder written by `python -m export RUN --format web`")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for a phone on the same Wi-Fi)")
    parser.add_argument("--https", action="store_true",
                        help="serve https with a self-signed certificate (the phone's live camera needs it)")
    return parser


class FolderHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files under ``directory`` only: no listings, nothing outside it (symlinks included)."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

    def list_directory(self, path):
        self.send_error(404, "Not found")
        return None

    def send_head(self):
        path = os.path.realpath(self.translate_path(self.path))
        root = os.path.realpath(self.directory)
        if path != root and not path.startswith(root + os.sep):
            self.send_error(404, "Not found")
            return None
        return super().send_head()

    def end_headers(self):
        self.send_header("Cache-Control", "no-cache")  # a re-export is picked up on reload
        super().end_headers()

    def log_message(self, format, *args):  # one short line per request, on stderr
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


class _TLSServer(http.server.ThreadingHTTPServer):
    """HTTPS with each connection's TLS handshake in that connection's own thread.

    A listening socket wrapped the usual way shakes hands inside ``accept()``, on the one thread that
    accepts every connection: a client that connects and sends nothing (a browser's pre-connect, a port
    scanner) froze the server for everyone until it gave up.
    """

    HANDSHAKE_SECONDS = 30

    def finish_request(self, request, client_address):
        request.settimeout(self.HANDSHAKE_SECONDS)
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError):  # not TLS, or gone before it finished: nothing to serve
            return
        request.settimeout(None)
        super().finish_request(request, client_address)


def make_server(folder, host="127.0.0.1", port=8000, certificate=None):
    """An HTTP(S) server of ``folder`` (not started); ``certificate`` is (cert path, key path) for https."""
    if not os.path.isfile(os.path.join(folder, "index.html")):
        raise ServeError(f"{folder}: no index.html here (write the page with: python -m export RUN --format web)")
    handler = lambda *a, **k: FolderHandler(*a, directory=os.path.abspath(folder), **k)  # noqa: E731
    try:
        server = (_TLSServer if certificate else http.server.ThreadingHTTPServer)((host, port), handler)
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    if certificate:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*certificate)
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server


def lan_address():
    """This machine's address on the local network (the one a default route uses); 127.0.0.1 if none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP connect sends nothing; it only picks the route
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _subject_name(address):
    """An IP address, or a host name (``--host mylaptop.local``), as a certificate's subject alternative name."""
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        return x509.DNSName(address)


def self_signed_certificate(folder, addresses):
    """Write a self-signed certificate and key (valid 30 days for ``addresses`` and localhost); their paths."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise ServeError('--https needs the cryptography package: pip install "nin_keras[web]"') from None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nin_keras serve")])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = [x509.DNSName("localhost")] + [_subject_name(a) for a in sorted(set(addresses)) if a != "localhost"]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False).sign(key, hashes.SHA256()))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    with open(key_path, "wb") as f:
        os.chmod(key_path, 0o600)
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def qr_text(url):
    """``url`` as a QR code drawn with terminal characters, or "" without the segno package."""
    try:
        import segno
    except ImportError:
        return ""
    import io

    out = io.StringIO()
    segno.make(url, error="l").terminal(out=out, compact=True)
    return out.getvalue()


def serve(args, print_fn=print):
    """Serve until Ctrl-C (then exit code 130, one line)."""
    if not 0 <= args.port <= 65535:
        raise ServeError(f"--port must be 0..65535 (0 picks a free one). Received: {args.port}")
    shown = lan_address() if args.host in ("0.0.0.0", "") else args.host
    import shutil
    import tempfile

    cert_dir = tempfile.mkdtemp(prefix="nin_keras-serve-")
    try:
        certificate = self_signed_certificate(cert_dir, [shown, "127.0.0.1"]) if args.https else None
        server = make_server(args.folder, args.host, args.port, certificate)
    finally:
        # The TLS context has read the key: it need not outlive this call on disk.
        shutil.rmtree(cert_dir, ignore_errors=True)
    return _serve_forever(server, args, shown, print_fn)


def _serve_forever(server, args, shown, print_fn):
    """Print the address (and QR code, and the certificate warning), then serve until Ctrl-C or SIGTERM."""
    # SIGTERM (a service manager, `kill`) stops like Ctrl-C: the line, the socket closed, exit code 143.
    # Installed before the address is printed: whoever reads it may stop the server at once.
    previous = signal.signal(signal.SIGTERM, _raise_signal) if _main_thread() else None
    try:
        _announce(server, args, shown, print_fn)
        server.serve_forever()
    except KeyboardInterrupt as e:
        print_fn("stopped", flush=True)
        return getattr(e, "exit_code", 130)
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _announce(server, args, shown, print_fn):
    """The address to open, a QR code of it for a phone, and what the browser will say about it."""
    port = server.server_address[1]
    url = f"{'https' if args.https else 'http'}://{shown}:{port}/"
    print_fn(f"serving {os.path.abspath(args.folder)} at {url} (Ctrl-C stops)", flush=True)
    if shown != args.host:
        print_fn("open it on a phone on the same Wi-Fi (scan):\n" + qr_text(url), flush=True)
    if args.https:
        print_fn("the certificate is self-signed: the browser warns once (\"Your connection is not private\"); "
                 "choose Advanced, then Proceed", flush=True)
    elif shown not in ("127.0.0.1", "localhost"):
        print_fn("plain http: phones allow the photo button but not the live camera; add --https for it", flush=True)


def _raise_signal(signum, frame):
    from nin_keras.errors import SignalInterrupt

    raise SignalInterrupt(signum)


def _main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def main(argv=None):
    """CLI entry point; returns the process exit code (130 after Ctrl-C)."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
