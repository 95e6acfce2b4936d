"""A captured session as a pcap file a person opens in Wireshark.

The capture holds only the payload each side sent (as the client saw it), so the TCP/IP
framing is synthetic: a handshake, data segments with consistent sequence numbers, and a
close, between 127.0.0.1 and 127.0.0.2 on the server port (5432 decodes as PostgreSQL).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from interceptor.audit.sink import Chunk

if TYPE_CHECKING:  # scapy is slow to import: loaded only when a pcap is written
    from scapy.packet import Packet

CLIENT_IP, SERVER_IP = "127.0.0.1", "127.0.0.2"
MSS = 1460


def _client_port(flow_id: str) -> int:
    return 32768 + zlib.crc32(flow_id.encode()) % 28000


def session_packets(chunks: Iterable[Chunk], server_port: int = 5432) -> list[Packet]:
    """Ether/IP/TCP packets carrying the chunks in order, timestamped as captured."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    chunks = list(chunks)
    if not chunks:
        raise ValueError("no captured bytes for this session")
    sport = _client_port(chunks[0].flow_id)
    seq = {"up": 1000, "down": 5000}
    ends = {"up": (CLIENT_IP, SERVER_IP, sport, server_port), "down": (SERVER_IP, CLIENT_IP, server_port, sport)}
    packets: list[Packet] = []

    def emit(direction: str, flags: str, ts: float, payload: bytes = b"") -> None:
        src, dst, s, d = ends[direction]
        other = "down" if direction == "up" else "up"
        ack = seq[other] if "A" in flags else 0
        packet = Ether() / IP(src=src, dst=dst) / TCP(sport=s, dport=d, flags=flags, seq=seq[direction], ack=ack,
                                                      window=65535) / payload
        packet.time = ts
        packets.append(packet)
        seq[direction] += len(payload) + (1 if "S" in flags or "F" in flags else 0)

    start, end = chunks[0].ts, chunks[-1].ts
    emit("up", "S", start)
    emit("down", "SA", start)
    emit("up", "A", start)
    for chunk in chunks:
        for offset in range(0, len(chunk.data), MSS):
            emit(chunk.direction, "PA", chunk.ts, chunk.data[offset:offset + MSS])
    emit("up", "FA", end)
    emit("down", "FA", end)
    emit("up", "A", end)
    return packets


def write_pcap(path: str | Path, chunks: Iterable[Chunk], server_port: int = 5432) -> int:
    """Write the session to `path`; returns the number of packets."""
    from scapy.utils import wrpcap

    packets = session_packets(chunks, server_port)
    wrpcap(str(path), packets)
    return len(packets)
