"""``python -m pipeline.stack up [SERVICE...] | down | status | env | start|stop SERVICE``."""

from __future__ import annotations

import argparse
import sys
import time

from pipeline.stack import (
    ALL,
    StackError,
    StackInfo,
    down,
    env_vars,
    load,
    start_service,
    status,
    stop_service,
    up,
)


def _print_info(info: StackInfo) -> None:
    print(f"# state_dir: {info.state_dir}")
    for key, value in env_vars(info).items():
        print(f"export {key}='{value}'")


def _print_status() -> int:
    rows = status()
    for st in rows.values():
        state = "running" if st.running else "stopped"
        conn = " ".join(f"{k}={v}" for k, v in st.connection.items())
        print(f"{st.name:14} {state:8} port={st.port} pid={st.pid} {conn}")
    return 0 if all(s.running for s in rows.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.stack")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="install and start (or reuse) the stack")
    p_up.add_argument("services", nargs="*", metavar="SERVICE", help=f"any of {', '.join(ALL)}")
    sub.add_parser("down", help="stop every recorded service")
    sub.add_parser("status", help="show each service (exit 1 unless all are running)")
    sub.add_parser("env", help="print export lines for a running stack")
    for name in ("start", "stop"):
        p = sub.add_parser(name, help=f"{name} one service, keeping its port and data")
        p.add_argument("service", choices=list(ALL))
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            t0 = time.monotonic()
            info = up(args.services or None)
            print(f"# stack up in {time.monotonic() - t0:.1f}s")
            _print_info(info)
            return 0
        if args.cmd == "down":
            down()
            print("stack stopped")
            return 0
        if args.cmd == "status":
            return _print_status()
        if args.cmd == "env":
            loaded = load()
            if loaded is None:
                print("stack is not (fully) running", file=sys.stderr)
                return 1
            _print_info(loaded)
            return 0
        if args.cmd == "start":
            _print_info(start_service(args.service))
            return 0
        if args.cmd == "stop":
            stop_service(args.service)
            return 0
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
