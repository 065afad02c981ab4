"""`python -m server`: serve an experiment to participants."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from statemachine import OUTCOMES

from . import __version__
from .app import make_app
from .arguments import port, positive, whole
from .config import Config
from .limits import AcceptGuard, guarded, raise_descriptor_limit, server_options, settle_collector
from .loader import DEFAULT, ExperimentError, load_study
from .precompress import DEFAULT_CACHE_DIR
from .runtime import WILDCARD_HOSTS, RuntimeSetupError
from .session import Timeouts

_count = whole(1)


def _outcomes(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip() and name.strip() != "none")
    unknown = [name for name in names if name not in OUTCOMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown outcome {unknown[0]!r}; outcomes are {', '.join(OUTCOMES)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Serve a Preflight experiment.",
        epilog="`python -m server export --help`: the data directory as tidy tables.\n"
        "`python -m server scenes --help`: an experiment's scene flow as a diagram.\n"
        "`python -m server init FOLDER`: a new study folder to start from.\n"
        "`python -m server snapshot [flags]`: make the memory snapshot --memory-snapshot offers for those flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"Preflight {__version__}")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=port, default=8888, help="port to listen on; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--experiment",
        default=DEFAULT,
        help="a Python file (path/to/study.py[:name]) or module (pkg.mod[:name]) that defines "
        "an Experiment named `experiment` (default: the built-in example)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="where participants' records are written (default: %(default)s)",
    )
    parser.add_argument(
        "--screening-timeout",
        type=positive,
        default=Timeouts.screening,
        help="seconds a page has to report its screening facts (default: %(default)s)",
    )
    parser.add_argument(
        "--preload-timeout",
        type=positive,
        default=Timeouts.preload,
        help="seconds a page has to report its Python runtime ready or failed (default: %(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=positive,
        default=Timeouts.grace,
        help="seconds a dropped participant has to reconnect before the session is abandoned (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-limit",
        type=positive,
        default=Config.messages_per_second,
        help="messages per second one connection may send, with bursts of twice as many (default: %(default)s)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=whole(1024),
        default=Config.max_message_bytes,
        help="larger frames are refused; frames over 4x this close the connection (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a page origin besides the server's own that may open /ws, e.g. https://study.example.org (repeatable)",
    )
    parser.add_argument(
        "--ping-interval",
        type=positive,
        default=Config.ping_interval,
        help="seconds between WebSocket pings (default: %(default)s)",
    )
    parser.add_argument(
        "--ping-timeout",
        type=positive,
        default=Config.ping_timeout,
        help="seconds without a pong before a connection is dropped; at most the ping interval (default: %(default)s)",
    )
    parser.add_argument(
        "--pyodide-dir",
        type=Path,
        default=Config.pyodide_dir,
        help="a local Pyodide distribution to serve: the npm core (default: %(default)s) or an unpacked "
        "full release, whose packages (numpy, ...) the page then loads with pyodide.loadPackage",
    )
    parser.add_argument(
        "--pyodide-url", default=None, help="load Pyodide from this URL instead of serving it (a distribution you host)"
    )
    parser.add_argument(
        "--wheelhouse",
        type=Path,
        default=Config.wheelhouse,
        help="directory of wheels served as the package index micropip installs from (default: "
        + (f"{Config.wheelhouse}" if Config.wheelhouse else ".preflight/wheelhouse beside the experiment file")
        + ")",
    )
    parser.add_argument(
        "--precompressed-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="where brotli and gzip copies of the runtime's files are kept; missing ones are made in the background "
        "at start-up, and `make` makes them ahead (default: %(default)s)",
    )
    parser.add_argument(
        "--no-precompressed",
        action="store_true",
        help="send the runtime's files as they are (e.g. behind a proxy or CDN that compresses them)",
    )
    limits = parser.add_argument_group("limits (defaults far above what a real study uses)")
    for flag, field, kind, what in (
        (
            "--hello-timeout",
            "hello_timeout",
            positive,
            "seconds a new /ws connection has to say hello (close 4002)",
        ),
        (
            "--idle-timeout",
            "idle_timeout",
            positive,
            "seconds an HTTP connection may idle or take over its headers",
        ),
        ("--max-body-bytes", "max_body_bytes", _count, "larger request bodies are refused unread, on every route"),
        ("--max-connections-per-ip", "max_connections_per_ip", _count, "open /ws connections one address may hold"),
        ("--sessions-per-ip", "sessions_per_ip_per_minute", _count, "new sessions one address may start a minute"),
        ("--max-sessions", "max_sessions", _count, "live sessions; beyond, a new hello is refused as server_full"),
        ("--max-session-bytes", "max_session_bytes", _count, "research data one session may send (quota_exceeded)"),
    ):
        limits.add_argument(
            flag, type=kind, default=getattr(Config, field), dest=field, help=f"{what} (default: %(default)s)"
        )
    parser.add_argument(
        "--public-origin",
        default="",
        help="the origin participants reach the server at (https://study.example.org): the package index builds "
        "its URLs from it (default: the Host header when it names --host:--port, else http://HOST:PORT; behind a "
        "proxy give this)",
    )
    parser.add_argument(
        "--lock-ids",
        type=_outcomes,
        default=Config.lock_ids,
        metavar="OUTCOMES",
        help="comma-separated outcomes after which a participant id may not start again; an id with a session "
        "in progress never may (default: completed; e.g. completed,excluded; 'none' for no lock)",
    )
    parser.add_argument(
        "--micropip",
        action="store_true",
        help="have the page install the study's wheels with micropip from the package index, as before, instead of "
        "unpacking the exact wheels the server resolved (slower; for comparison)",
    )
    parser.add_argument(
        "--memory-snapshot",
        action="store_true",
        help="offer pages a Pyodide memory snapshot of the runtime (experimental; made by `python -m server snapshot` "
        "with the same flags): Python's start-up and the installs become one more download",
    )
    parser.add_argument(
        "--snapshot-dir",
        type=Path,
        default=Config.snapshot_dir,
        help="where memory snapshots are kept (default: %(default)s)",
    )
    parser.add_argument(
        "--admin-token",
        default=None,
        help="token that opens /admin (at least 16 characters; default: a random one, printed at start-up)",
    )
    args = parser.parse_args(argv)
    for origin in args.allow_origin:
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            parser.error(f"--allow-origin takes an origin such as https://study.example.org, got {origin!r}")
    if args.public_origin and (
        not args.public_origin.startswith(("http://", "https://")) or args.public_origin.count("/") != 2
    ):
        parser.error(f"--public-origin takes an origin such as https://study.example.org, got {args.public_origin!r}")
    if args.admin_token is not None and len(args.admin_token) < 16:
        parser.error("--admin-token must be at least 16 characters")
    if args.ping_timeout > args.ping_interval:
        parser.error(f"--ping-timeout ({args.ping_timeout}) cannot exceed --ping-interval ({args.ping_interval})")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        from .export import main as export

        return export(argv[1:])
    if argv[:1] == ["init"]:
        from .new_study import main as init

        return init(argv[1:])
    if argv[:1] == ["scenes"]:
        from .scene_flow import main as scenes

        return scenes(argv[1:])
    snapshot = argv[:1] == ["snapshot"]
    args = parse_args(argv[1:] if snapshot else argv)
    try:
        source = load_study(args.experiment)
    except ExperimentError as exc:
        print(f"python -m server: error: {exc}", file=sys.stderr)
        return 2
    config = Config(
        experiment=source.experiment,
        experiment_file=source.file,
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        timeouts=Timeouts(screening=args.screening_timeout, preload=args.preload_timeout, grace=args.grace),
        messages_per_second=args.rate_limit,
        max_message_bytes=args.max_message_bytes,
        allowed_origins=tuple(args.allow_origin),
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        pyodide_dir=args.pyodide_dir,
        pyodide_url=args.pyodide_url,
        wheelhouse=args.wheelhouse,
        lock_ids=args.lock_ids,
        public_origin=args.public_origin,
        hello_timeout=args.hello_timeout,
        idle_timeout=args.idle_timeout,
        max_body_bytes=args.max_body_bytes,
        max_connections_per_ip=args.max_connections_per_ip,
        sessions_per_ip_per_minute=args.sessions_per_ip_per_minute,
        max_sessions=args.max_sessions,
        max_session_bytes=args.max_session_bytes,
        **({} if args.admin_token is None else {"admin_token": args.admin_token}),
        precompressed_dir=None if args.no_precompressed else args.precompressed_dir,
        memory_snapshot=args.memory_snapshot,
        micropip=args.micropip,
        snapshot_dir=args.snapshot_dir,
    )
    if snapshot:
        from .snapshot_maker import make_command

        return make_command(config)
    generated_token = args.admin_token is None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)
    return asyncio.run(_serve(config, generated_token))


async def _serve(config: Config, generated_token: bool) -> int:
    try:
        sockets = bind_sockets(config.port, config.host)
    except OSError as exc:
        print(f"python -m server: error: cannot listen on {config.host}:{config.port}: {exc.strerror}", file=sys.stderr)
        return 2
    if config.port == 0:  # the app's own URLs (the package index) and the ones printed below name the port taken
        config = dataclasses.replace(config, port=sockets[0].getsockname()[1])
    try:
        app = make_app(config)
    except RuntimeSetupError as exc:
        print(f"python -m server: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the data directory cannot be made or written, most often
        data = str(config.data_dir)
        which = " (the data directory, --data-dir)" if str(exc.filename).startswith(data) else ""
        print(f"python -m server: error: {exc.strerror}: {exc.filename}{which}", file=sys.stderr)
        return 2
    settle_collector()
    soft, hard = raise_descriptor_limit()
    logging.getLogger("preflight").info("open-file limit: %s (hard %s)", soft, hard)
    HTTPServer(app, **server_options(config)).add_sockets(guarded(sockets, AcceptGuard()))
    if config.host in WILDCARD_HOSTS and not config.public_origin:
        logging.getLogger("preflight").warning(
            "listening on every interface without --public-origin: the package index takes its URLs' origin from "
            "any Host header naming port %d; give --public-origin to fix it",
            config.port,
        )
    print(f"Preflight is serving {config.experiment.name!r}; data goes to {config.data_dir}/", flush=True)
    origin = config.public_origin or f"http://{config.host}:{config.port}"  # where participants reach it
    if config.public_origin:
        print(f"Listening on http://{config.host}:{config.port}/", flush=True)
    print(f"Participant URL: {origin}/", flush=True)
    if generated_token:
        print(f"Admin view: {origin}/admin?token={config.admin_token}", flush=True)
    else:
        print(f"Admin view: {origin}/admin (token from --admin-token)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:  # stopped (Ctrl-C): what the last event recorded is written before the loop goes
        app.settings["study"].store.flush()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
