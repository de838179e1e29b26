"""Running the web app: ``serve`` (the command's work) and ``start_server`` (a background
server for tests, benchmarks and notebooks)."""
from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from workbench.errors import ConfigError

__all__ = ["serve", "start_server"]


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket bound to (host, port): port 0 picks a free one, and a busy
    port fails here, as an OSError naming it, before anything is printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name != "nt":  # as uvicorn does: restart on a port left in TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port} ({e.strerror or e})") from e
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_server(app: Any, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0
                 ) -> tuple[str, Callable[[], None]]:
    """Run ``app`` under uvicorn in a background thread.

    Parameters
    ----------
    app
        An ASGI app, e.g. :func:`workbench.serve.create_app` of a model.
    host, port : str, int
        Where to listen; port 0 (the default) picks a free port.
    timeout : float
        Seconds to wait for the server to start.

    Returns
    -------
    url : str
        The base URL, ``http://127.0.0.1:PORT/``.
    stop : callable
        Stops the server and waits for its thread (safe to call twice).
    """
    import uvicorn

    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    # uvicorn installs signal handlers only in the main thread, so this one leaves them alone.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn:{bound_port}",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server on {host}:{bound_port} did not start within {timeout:g} s")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout)
        sock.close()

    return _url(host, bound_port), stop


def serve(model_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000,
          keep_uploads: str | os.PathLike[str] | None = None, max_upload_mb: float = 20) -> None:
    """Serve a model bundle's page and API until interrupted (Ctrl+C).

    Parameters
    ----------
    model_dir : path
        The bundle folder (:func:`workbench.bundle.load_model`).
    host, port : str, int
        Where to listen. The default, 127.0.0.1, is this machine only; another host
        makes the page reachable from the network, and a warning says so.
    keep_uploads : path, optional
        Folder to keep every decodable upload in (under its SHA-256); by default uploads
        are never written to disk.
    max_upload_mb : float
        Largest image file accepted, in MiB.
    """
    import uvicorn

    from workbench.bundle import load_model
    from workbench.serve.app import create_app

    if not max_upload_mb > 0:
        raise ConfigError(f"max_upload_mb must be > 0, got {max_upload_mb}")
    model = load_model(model_dir)
    app = create_app(model, max_upload_bytes=int(max_upload_mb * 2**20),
                     keep_uploads=None if keep_uploads is None else Path(keep_uploads))
    sock = _bind(host, port)
    url = _url(host, sock.getsockname()[1])
    print(f"workbench serve: {model.name}")
    print(f"  {url}  (Ctrl+C stops)")
    print("  Research use only — not a medical device.")
    if not _is_loopback(host):
        print(f"  warning: listening on {host}: anyone who can reach this machine can use the page")
    if keep_uploads is not None:
        print(f"  keeping uploads in {Path(keep_uploads).resolve()}")
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
