"""`python -m server`: serve an experiment to participants."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from .app import Config, make_app
from .loader import DEFAULT, ExperimentError, load_experiment
from .runtime import RuntimeSetupError
from .session import Timeouts


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server", description="Serve a Preflight experiment.",
                                     epilog="`python -m server export --help`: the data directory as tidy tables.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8888, help="port to listen on (default: %(default)s)")
    parser.add_argument("--experiment", default=DEFAULT,
                        help="a Python file (path/to/study.py[:name]) or module (pkg.mod[:name]) that defines "
                             "an Experiment named `experiment` (default: the built-in example)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="where participants' records are written (default: %(default)s)")
    parser.add_argument("--screening-timeout", type=_positive, default=Timeouts.screening,
                        help="seconds a page has to report its screening facts (default: %(default)s)")
    parser.add_argument("--preload-timeout", type=_positive, default=Timeouts.preload,
                        help="seconds a page has to report its Python runtime ready or failed (default: %(default)s)")
    parser.add_argument("--ping-interval", type=_positive, default=Config.ping_interval,
                        help="seconds between WebSocket pings (default: %(default)s)")
    parser.add_argument("--ping-timeout", type=_positive, default=Config.ping_timeout,
                        help="seconds without a pong before a connection is dropped; at most the ping interval "
                             "(default: %(default)s)")
    parser.add_argument("--pyodide-dir", type=Path, default=Config.pyodide_dir,
                        help="a local Pyodide distribution to serve: the npm core (default: %(default)s) or a "
                             "copy of the full release, for binary packages such as numpy")
    parser.add_argument("--pyodide-url", default=None,
                        help="load Pyodide from this URL instead of serving it (a distribution you host)")
    parser.add_argument("--wheelhouse", type=Path, default=Config.wheelhouse,
                        help="directory of wheels served as the package index micropip installs from "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.ping_timeout > args.ping_interval:
        parser.error(f"--ping-timeout ({args.ping_timeout}) cannot exceed --ping-interval ({args.ping_interval})")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        from .export import main as export
        return export(argv[1:])
    args = parse_args(argv)
    try:
        experiment = load_experiment(args.experiment)
    except ExperimentError as exc:
        print(f"python -m server: error: {exc}", file=sys.stderr)
        return 2
    config = Config(experiment=experiment, data_dir=args.data_dir, host=args.host, port=args.port,
                    timeouts=Timeouts(screening=args.screening_timeout, preload=args.preload_timeout),
                    ping_interval=args.ping_interval, ping_timeout=args.ping_timeout,
                    pyodide_dir=args.pyodide_dir, pyodide_url=args.pyodide_url, wheelhouse=args.wheelhouse)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)
    return asyncio.run(_serve(config))


async def _serve(config: Config) -> int:
    try:
        app = make_app(config)
    except RuntimeSetupError as exc:
        print(f"python -m server: error: {exc}", file=sys.stderr)
        return 2
    try:
        app.listen(config.port, config.host)
    except OSError as exc:
        print(f"python -m server: error: cannot listen on {config.host}:{config.port}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"Preflight is serving {config.experiment.name!r}; data goes to {config.data_dir}/", flush=True)
    print(f"Participant URL: http://{config.host}:{config.port}/", flush=True)
    await asyncio.Event().wait()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
