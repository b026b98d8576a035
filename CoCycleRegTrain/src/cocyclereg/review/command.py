"""``cocyclereg review``: the command-line face of the review page.

Registering the command imports nothing of trame or Slicer: they are imported when the command
runs, and a missing ``review`` extra is reported with the install command.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import sys
from pathlib import Path

from cocyclereg.errors import InputError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080

DESCRIPTION = """\
Look at registration results in a web browser, on 3D Slicer's own slice views (trame-slicer):
the pair list (status, folded voxels, Dice; failed pairs marked), and for the chosen pair the
fixed image with the moving image over it through its transform (opacity slider, flicker), the
Jacobian determinant with its colour bar and folded-voxel count, the warped labels as outlines
and the deformed grid.

PATH is the output folder of `cocyclereg demo`, of `cocyclereg register --summary` (its
summary.json beside the outputs) or of `cocyclereg batch` (results.csv and one folder per
pair). The page listens on the loopback address only, unless --host says otherwise; open the
address it prints. Ctrl-C stops it. Needs pip install "cocyclereg[review]".

  cocyclereg demo && cocyclereg review cocyclereg-demo
  cocyclereg review results --port 8090
"""


def _port(text: str) -> int:
    """argparse type: a TCP port number, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return value


def add_review_command(commands) -> argparse.ArgumentParser:
    """Add ``review`` to the ``cocyclereg`` subcommands ``commands``."""
    review = commands.add_parser(
        "review",
        help="look at registration results in a web browser (Slicer's slice views)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
    )
    review.add_argument("path", type=Path, metavar="PATH", help="a result folder")
    review.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})"
    )
    review.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 "
        "opens the page to the network)",
    )
    review.set_defaults(handler=run_review)
    return review


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`InputError` when ``port`` cannot be listened on at ``host``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the server binds (aiohttp): a port left in TIME_WAIT by a stopped page is free,
        # one another program listens on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise InputError(
                    f"port {port} on {host} is taken (another program, or a review page "
                    "already running): give another with --port"
                ) from None
            raise InputError(f"cannot listen on {host}:{port}: {error.strerror}") from None


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to listen on) reaches this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK_NAMES


def page_address(host: str, port: int) -> str:
    """The page's URL (IPv6 addresses in brackets)."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def request_refusal(headers: dict, loopback: bool) -> str | None:
    """Why a request to the page is refused (``None``: served). The page streams patient
    images and answers every WebSocket client, so a web page from another origin (which a
    browser lets open a WebSocket to localhost) must not reach it: a request's ``Origin``, when
    it has one, must be the page's own address (its ``Host``), and a page served on the
    loopback address answers only to a loopback ``Host`` (a foreign domain resolving to
    127.0.0.1, DNS rebinding, does not pass)."""
    host = headers.get("Host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if loopback and not is_loopback(name):
        return f"the page answers to its loopback address only, not to Host {host!r}"
    origin = headers.get("Origin")
    if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
        return f"requests from another origin ({origin!r}) are refused"
    return None


def _guard(loopback: bool):
    """aiohttp middleware applying :func:`request_refusal` to every request."""
    from aiohttp import web

    @web.middleware
    async def guard(request, handler):
        refusal = request_refusal(dict(request.headers), loopback)
        if refusal is not None:
            return web.Response(status=403, text=refusal + "\n")
        return await handler(request)

    return guard


def run_review(args: argparse.Namespace) -> int:
    """Read the result folder, check the port, then serve the page until Ctrl-C."""
    from cocyclereg.review.results import read_result_folder

    pairs = read_result_folder(args.path)
    check_port_free(args.host, args.port)
    try:
        from cocyclereg.review.app import ReviewApp
    except ImportError as error:
        raise InputError(
            f'the review page needs trame-slicer ({error}): pip install "cocyclereg[review]"'
        ) from None
    app = ReviewApp(args.path.resolve(), pairs)
    url = page_address(args.host, args.port)
    loopback = is_loopback(args.host)
    if not loopback:
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine on port "
            f"{args.port} can open the page and see these images (it has no login)",
            file=sys.stderr,
            flush=True,
        )

    def announce(**_) -> None:
        viewable = sum(pair.viewable for pair in pairs)
        print(
            f"reviewing {len(pairs)} pair(s) of {args.path} ({viewable} to show) at {url} "
            "(Ctrl-C stops)",
            flush=True,
        )

    app.server.controller.on_server_ready.add(announce)
    # Before the server starts: every HTTP and WebSocket request passes the guard first.
    app.server.controller.on_server_bind.add(
        lambda web_server: web_server.app.middlewares.append(_guard(loopback))
    )
    # trame reads its own options from sys.argv as well: give it none of ours.
    sys.argv = sys.argv[:1]
    app.server.start(
        port=args.port, host=args.host, open_browser=False, show_connection_info=False, timeout=0
    )
    return 0
