"""``impair --pcap``: the capture's bytes, pcapng that Wireshark and tshark open.

Each datagram becomes a UDP/IP packet (IPv4 or IPv6 as it came, with its addresses and ports
as the proxy saw it arrive) on one raw-IP interface, with its fate in the packet's comment
(``frame.comment``) and its direction in its flags (inbound: towards the server). dpkt builds
the IP and UDP headers, checksums included, and the pcapng blocks: a maintained library that
does both, where python-pcapng writes blocks only and scapy costs a second to import. The
encoder runs on the record writer's thread (:class:`~udpchat.record.RecordWriter`).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import dpkt
import dpkt.pcapng

from udpchat.record import Record

LINKTYPE_RAW = 101
"""Raw IP: each packet starts with its IPv4 or IPv6 header."""
SNAPLEN = 65535
OPTION_FLAGS = 2
"""``epb_flags``: bits 0-1 are the direction."""
INBOUND, OUTBOUND = 1, 2
TTL = 64


def udp_packet(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> bytes:
    """``payload`` as one UDP datagram in an IPv4 or IPv6 packet, checksums included."""
    udp = dpkt.udp.UDP(sport=source[1], dport=destination[1], data=payload)
    udp.ulen = len(udp)
    if ":" in source[0]:
        ip6 = dpkt.ip6.IP6(
            src=socket.inet_pton(socket.AF_INET6, source[0].split("%")[0]),
            dst=socket.inet_pton(socket.AF_INET6, destination[0].split("%")[0]),
            nxt=dpkt.ip.IP_PROTO_UDP,
            hlim=TTL,
            data=udp,
        )
        ip6.plen = udp.ulen
        return bytes(ip6)
    ip4 = dpkt.ip.IP(
        src=socket.inet_aton(source[0]),
        dst=socket.inet_aton(destination[0]),
        p=dpkt.ip.IP_PROTO_UDP,
        ttl=TTL,
        data=udp,
    )
    return bytes(ip4)


def _option(code: int, **value: Any) -> Any:
    return dpkt.pcapng.PcapngOptionLE(code=code, **value)


def _end_of_options() -> Any:
    return _option(dpkt.pcapng.PCAPNG_OPT_ENDOFOPT)


def section(application: str) -> bytes:
    """The file's start: the section header and the one interface."""
    header = dpkt.pcapng.SectionHeaderBlockLE(
        opts=[
            _option(dpkt.pcapng.PCAPNG_OPT_SHB_USERAPPL, data=application.encode()),
            _end_of_options(),
        ]
    )
    interface = dpkt.pcapng.InterfaceDescriptionBlockLE(
        linktype=LINKTYPE_RAW,
        snaplen=SNAPLEN,
        opts=[
            _option(dpkt.pcapng.PCAPNG_OPT_IF_NAME, data=b"udpchat-impair"),
            _option(dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL, data=b"\x06"),  # microseconds
            _end_of_options(),
        ],
    )
    return bytes(header) + bytes(interface)


def packet_block(record: Record) -> bytes:
    """One packet: its time (microseconds), the datagram, its comment and direction."""
    micros = round(record["time_s"] * 1_000_000)
    block = dpkt.pcapng.EnhancedPacketBlockLE(
        ts_high=micros >> 32,
        ts_low=micros & 0xFFFFFFFF,
        pkt_data=udp_packet(record["source"], record["destination"], record["data"]),
        opts=[
            _option(dpkt.pcapng.PCAPNG_OPT_COMMENT, text=record["comment"]),
            _option(
                OPTION_FLAGS,
                data=struct.pack("<I", INBOUND if record["inbound"] else OUTBOUND),
            ),
            _end_of_options(),
        ],
    )
    return bytes(block)


def encode(record: Record) -> bytes:
    """A record as pcapng: the header opens the section, each packet is a block, and the
    end record (a record file's last) is nothing."""
    if record["type"] == "header":
        return section(f"udpchat impair ({record.get('label', '')})")
    if record["type"] == "packet":
        return packet_block(record)
    return b""
