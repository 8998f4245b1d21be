#!/usr/bin/env python3
"""Probes for scripts/bench/network.sh, run inside a task's network namespace (nsenter):

  netprobe.py dns NAME COUNT
      COUNT queries for NAME's A record to the task's resolver (127.0.0.11:53), one after
      another; prints {"p50_ms", "p99_ms", "max_ms", "answers"} as JSON.
  netprobe.py vip NAME SCALE_CMD... -- PS_CMD...
      Resolves NAME (its VIP), notes which tasks answer http://VIP/ (their hostnames), runs
      SCALE_CMD (which adds a task), then polls PS_CMD (`service ps NAME --format json`)
      until one more task is RUNNING and http://VIP/ until a new hostname answers; prints
      {"running_to_vip_s"} (negative if the VIP answered before ps showed RUNNING).
"""

import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time

RESOLVER = ("127.0.0.11", 53)


def query(name):
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    return qid, q


def answers(resp):
    """The A records of a response (it names one question)."""
    an = struct.unpack(">H", resp[6:8])[0]
    i = 12
    while resp[i] != 0:
        i += resp[i] + 1
    i += 5
    out = []
    for _ in range(an):
        if resp[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while resp[i] != 0:
                i += resp[i] + 1
            i += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", resp[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(resp[i:i + 4]))
        i += rdlen
    return out


def resolve(sock, name):
    qid, q = query(name)
    sock.send(q)
    while True:
        resp = sock.recv(4096)
        if struct.unpack(">H", resp[:2])[0] == qid:
            return answers(resp)


def dns(name, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect(RESOLVER)
    for _ in range(50):  # warm up
        resolve(s, name)
    times = []
    got = []
    for _ in range(count):
        t = time.perf_counter_ns()
        got = resolve(s, name)
        times.append((time.perf_counter_ns() - t) / 1e6)
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    print(json.dumps({"p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": times[-1], "answers": got}))


def http_get(addr):
    try:
        with socket.create_connection((addr, 80), timeout=0.5) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                b = c.recv(4096)
                if not b:
                    break
                data += b
        return data.split(b"\r\n\r\n", 1)[1].decode().strip()
    except (OSError, IndexError):
        return None


def running(ps_cmd):
    out = subprocess.run(ps_cmd, capture_output=True, text=True).stdout
    n = 0
    for line in out.splitlines():
        t = json.loads(line)
        if t.get("DesiredState") == "Running" and t.get("CurrentState", "").startswith("Running"):
            n += 1
    return n


def vip(name, scale_cmd, ps_cmd):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect(RESOLVER)
    addr = resolve(s, name)[0]
    before = running(ps_cmd)
    seen = set()
    for _ in range(20):
        h = http_get(addr)
        if h:
            seen.add(h)
    t_running = []

    def watch():
        deadline = time.time() + 60
        while time.time() < deadline:
            if running(ps_cmd) > before:
                t_running.append(time.time())
                return
            time.sleep(0.02)

    w = threading.Thread(target=watch)
    w.start()
    subprocess.run(scale_cmd, check=True, capture_output=True)
    deadline = time.time() + 60
    t_answer = None
    while time.time() < deadline:
        h = http_get(addr)
        if h and h not in seen:
            t_answer = time.time()
            break
        time.sleep(0.005)
    w.join()
    if t_answer is None or not t_running:
        sys.exit("netprobe: the new task never answered through the VIP (or never ran)")
    print(json.dumps({"running_to_vip_s": t_answer - t_running[0]}))


if __name__ == "__main__":
    if sys.argv[1] == "dns":
        dns(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "vip":
        rest = sys.argv[3:]
        k = rest.index("--")
        vip(sys.argv[2], rest[:k], rest[k + 1:])
    else:
        sys.exit(__doc__)
