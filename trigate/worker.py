"""A worker process, started by the supervisor: `python -m trigate.worker PIPE FD...`.

It serves on the listening sockets whose descriptors it inherited, and drains
on SIGTERM, on SIGINT, or when the supervisor's end of PIPE closes (the
supervisor is gone, so no one would ever stop this worker otherwise).
"""

from __future__ import annotations

import socket
import sys

from trigate.server import run_worker


def main(argv: list[str]) -> None:
    pipe, *descriptors = (int(arg) for arg in argv)
    run_worker([socket.socket(fileno=fd) for fd in descriptors], supervisor_pipe=pipe)


if __name__ == "__main__":
    main(sys.argv[1:])
