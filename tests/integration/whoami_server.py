"""Runs inside the remote namespace: for each connection, send the peer address this host
sees as one line, then echo whatever comes until EOF."""

import socket
import sys
import threading


def serve(conn: socket.socket, peer: tuple) -> None:
    with conn:
        conn.sendall(f"{peer[0]} {peer[1]}\n".encode())
        while data := conn.recv(65536):
            conn.sendall(data)


def listen(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def accept_forever(sock: socket.socket) -> None:
    while True:
        conn, peer = sock.accept()
        threading.Thread(target=serve, args=(conn, peer), daemon=True).start()


def main() -> None:
    port = int(sys.argv[1])
    v4, v6 = listen(socket.AF_INET, "0.0.0.0", port), listen(socket.AF_INET6, "::", port)
    threading.Thread(target=accept_forever, args=(v6,), daemon=True).start()
    print("listening", flush=True)
    accept_forever(v4)


if __name__ == "__main__":
    main()
