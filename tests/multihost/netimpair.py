#!/usr/bin/env python3
"""Delays and drops the packets of one netfilter queue (NFQUEUE), as tc netem
would: each packet is dropped with probability --loss, every other one is let
through --delay-ms after it arrived, in order.

For kernels without sch_netem (the 2-core build machines' kernel has none):
the harness sends the traffic to impair to this queue with an iptables
NFQUEUE rule inside the test host's network namespace and runs this there.
Standard library only (raw netlink, NETLINK_NETFILTER). Prints "ready" once
bound; on SIGTERM prints the counts and exits 0.

usage: netimpair.py --queue N --delay-ms MS --loss FRACTION [--seed S]
"""
import argparse
import collections
import errno
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_DROP = 0
NF_ACCEPT = 1


def attr(kind, payload):
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


class Queue:
    def __init__(self, num):
        self.num = num
        self.seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((0, 0))
        self.request(NFQNL_MSG_CONFIG, socket.AF_INET,
                     attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)))
        self.request(NFQNL_MSG_CONFIG, socket.AF_UNSPEC,
                     attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)) +
                     attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 65536)))

    def message(self, msg_type, family, body, flags):
        self.seq += 1
        payload = struct.pack("!BBH", family, 0, self.num) + body
        header = struct.pack("=IHHII", 16 + len(payload), (NFNL_SUBSYS_QUEUE << 8) | msg_type,
                             flags, self.seq, 0)
        return header + payload

    def request(self, msg_type, family, body):
        """Sends a config message and waits for its acknowledgement."""
        self.sock.send(self.message(msg_type, family, body, NLM_F_REQUEST | NLM_F_ACK))
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                if kind == NLMSG_ERROR and seq == self.seq:
                    (error,) = struct.unpack_from("=i", data, offset + 16)
                    if error != 0:
                        raise OSError(-error, "nfqueue config: " + errno.errorcode.get(-error, "?"))
                    return
                offset += (length + 3) & ~3

    def verdict(self, packet_id, verdict):
        body = attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
        self.sock.send(self.message(NFQNL_MSG_VERDICT, socket.AF_UNSPEC, body, NLM_F_REQUEST))

    def packets(self):
        """The ids of the packets in one received datagram."""
        data = self.sock.recv(1 << 20)
        offset = 0
        ids = []
        while offset + 16 <= len(data):
            length, kind, _, _, _ = struct.unpack_from("=IHHII", data, offset)
            if length < 16:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                a = offset + 20  # past nlmsghdr and nfgenmsg
                while a + 4 <= offset + length:
                    alen, akind = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if (akind & 0x7FFF) == NFQA_PACKET_HDR:
                        ids.append(struct.unpack_from("!I", data, a + 4)[0])
                    a += (alen + 3) & ~3
            offset += (length + 3) & ~3
        return ids


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    queue = Queue(args.queue)
    delay = args.delay_ms / 1000.0
    held = collections.deque()  # (release time, packet id), oldest first
    counts = {"passed": 0, "dropped": 0}
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    print("ready", flush=True)
    while not stopping:
        now = time.monotonic()
        while held and held[0][0] <= now:
            queue.verdict(held.popleft()[1], NF_ACCEPT)
            counts["passed"] += 1
        timeout = max(0.0, held[0][0] - now) if held else 0.5
        try:
            readable, _, _ = select.select([queue.sock], [], [], timeout)
            if not readable:
                continue
            arrived = time.monotonic()
            for packet_id in queue.packets():
                if rng.random() < args.loss:
                    queue.verdict(packet_id, NF_DROP)
                    counts["dropped"] += 1
                else:
                    held.append((arrived + delay, packet_id))
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno != errno.ENOBUFS:  # a burst overflowed the socket: those packets are lost
                raise
    for _, packet_id in held:
        queue.verdict(packet_id, NF_ACCEPT)
    print("passed %(passed)d dropped %(dropped)d" % counts, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
