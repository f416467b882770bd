"""The ``catzilla-mp`` command (pyproject: ``catzilla-mp = "catzilla_mp.cli:main"``).

    catzilla-mp top [SEGMENT|PID] [--once] [--interval S]   live view of a running engine
    catzilla-mp bench [...]                                  benchmarks (python -m bench)
    catzilla-mp demo [...]                                   a small demo app
    catzilla-mp serve --socket PATH [--workers N] [--durable DB]   one engine for a whole
                                                             web server's app processes

Each subcommand imports its module only when run, so ``top`` starts fast and
needs none of the web or benchmark extras.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Optional, Sequence


def _top(args: argparse.Namespace) -> int:
    from .observability.top import run

    color = None if not args.no_color else False
    return run(args.target, interval=args.interval, once=args.once, color=color)


def _bench(args: argparse.Namespace) -> int:
    # bench/ is a package of the repository, not of the wheel: an editable
    # install from a checkout finds it next to catzilla_mp/
    repo = pathlib.Path(__file__).resolve().parent.parent
    if (repo / "bench" / "__main__.py").is_file() and str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    try:
        from bench.__main__ import main as bench_main
    except ImportError:
        print("catzilla-mp bench: run it from a checkout of the repository "
              '(pip install -e ".[bench]")', file=sys.stderr)
        return 2
    return bench_main(args.rest) or 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.rest) or 0


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .server import TaskServer

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    options = dict(workers=args.workers, queue_size=args.queue_size,
                   memory_pool_mb=args.memory_pool_mb, durable=args.durable)
    if args.workers is not None:
        options["min_workers"] = min(2, args.workers)
    server = TaskServer(args.socket, client_limit=args.client_limit, **options)
    print(f"catzilla-mp serve: pid {os.getpid()}, listening on {server.path}", flush=True)
    server.serve_forever(stop)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catzilla-mp", description="Tools for catzilla_mp engines.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    top = sub.add_parser("top", help="live view of a running engine (read-only, from its shared memory)",
                         description="Attach read-only to a running engine's shared memory and show "
                                     "its queues and workers, refreshed like top (q or Ctrl-C quits).")
    top.add_argument("target", nargs="?", default=None,
                     help="segment name (czmp_<uid>_<pid>_...), or the engine's process id; "
                          "default: the only running engine of this user")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--interval", type=float, default=1.0, metavar="S",
                     help="seconds between refreshes (default 1)")
    top.add_argument("--no-color", action="store_true", help="no bold/dim escapes")
    top.set_defaults(func=_top)

    bench = sub.add_parser("bench", help="run the benchmarks (python -m bench)", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)

    demo = sub.add_parser("demo", help="run the demo", add_help=False)
    demo.add_argument("rest", nargs=argparse.REMAINDER)
    demo.set_defaults(func=_demo)

    serve = sub.add_parser("serve", help="one engine for every app process of a web server",
                           description="Own one engine (worker pool, optional durable journal) "
                                       "and serve the app processes that pass server=SOCKET "
                                       "(docs/deploy.md). SIGTERM or Ctrl-C stops it.")
    serve.add_argument("--socket", required=True, metavar="PATH",
                       help="Unix socket to listen on (its directory is made 0700)")
    serve.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs)")
    serve.add_argument("--durable", default=None, metavar="DB",
                       help="journal every task in this SQLite file (survives restarts)")
    serve.add_argument("--client-limit", type=int, default=None, metavar="N",
                       help="tasks one app process may have queued or running (default: half "
                            "the queue)")
    serve.add_argument("--queue-size", type=int, default=10000)
    serve.add_argument("--memory-pool-mb", type=int, default=500)
    serve.set_defaults(func=_serve)
    return parser


#: Subcommands that parse their own options: argparse's REMAINDER drops a
#: leading option ("demo --quick"), so their arguments bypass this parser.
PASSTHROUGH = {"bench": _bench, "demo": _demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return PASSTHROUGH[argv[0]](argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
