"""A stand-in agent: connects where it is told and reports what happened as JSON lines.

`agent_client.py HOST PORT [--family 6]`: one connection, then exit.
`agent_client.py --serve`: read `HOST PORT [FAMILY]` lines on stdin, answer each (a long-lived
agent, so tests can show it regains access without being restarted).
`agent_client.py --spawn-grandchild HOST PORT`: fork twice and connect from the grandchild.
"""

import errno
import json
import os
import socket
import sys


def attempt(host: str, port: int, family: int = 0) -> dict:
    fam = family or (socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.settimeout(5)
    result = {"pid": os.getpid(), "target": f"{host}:{port}"}
    try:
        sock.connect((host, port))
        result["local"] = list(sock.getsockname()[:2])
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            line += chunk
        result["seen_by_server"] = line.decode().split()
        sock.sendall(b"ping")
        result["echo"] = sock.recv(16).decode()
        result["ok"] = bool(result["seen_by_server"])
    except OSError as exc:
        result.update(ok=False, error=errno.errorcode.get(exc.errno, str(exc)))
    finally:
        sock.close()
    return result


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "--serve":
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        for line in sys.stdin:
            host, port, *fam = line.split()
            print(json.dumps(attempt(host, int(port), int(fam[0]) if fam else 0)), flush=True)
        return
    if args and args[0] == "--spawn-grandchild":
        host, port = args[1], int(args[2])
        if os.fork() == 0:
            if os.fork() == 0:
                print(json.dumps(dict(attempt(host, port), grandchild=True)), flush=True)
                os._exit(0)
            os.wait()
            os._exit(0)
        os.wait()
        return
    family = socket.AF_INET6 if "--family" in args and args[args.index("--family") + 1] == "6" else 0
    print(json.dumps(attempt(args[0], int(args[1]), family)), flush=True)


if __name__ == "__main__":
    main()
