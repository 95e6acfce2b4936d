"""Runs inside the cgroup it is told to join; times connect() (or connect + first byte)
N times and prints the latencies in nanoseconds as JSON. Kept tiny so the loop measures
the kernel and the enforcer, not Python."""

import json
import os
import socket
import sys
import time


def main() -> None:
    cgroup, host, port, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    if cgroup != "-":
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    clock = time.perf_counter_ns
    out = []
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_STREAM)
        t0 = clock()
        s.connect((host, port))
        if mode == "ttfb":
            s.recv(64)
        t1 = clock()
        s.close()
        out.append(t1 - t0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
