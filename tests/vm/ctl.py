#!/usr/bin/env python3
"""Runs a shell script in a VM suite guest, through its virtio serial port "ctl" (a Unix
socket on the host): tests/vm/ctl.py SOCKET TIMEOUT SCRIPT. Prints the script's output
(stdout and stderr) and exits with its exit code; 124 if no answer came in TIMEOUT
seconds, 125 if the guest cannot be reached."""

import base64
import os
import socket
import sys
import time


def main():
    path, timeout, script = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    deadline = time.time() + timeout
    cid = "%d-%d" % (os.getpid(), int(time.time() * 1e6))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        print("ctl: cannot reach the guest at %s: %s" % (path, e), file=sys.stderr)
        sys.exit(125)
    # the guest kills the script a little before we give up on it
    secs = max(1, int(timeout) - 1)
    s.sendall(("%s %d %s\n" % (cid, secs, base64.b64encode(script.encode()).decode())).encode())
    buf = b""
    while True:
        left = deadline - time.time()
        if left <= 0:
            print("ctl: no answer within %.0f s to: %s" % (timeout, script), file=sys.stderr)
            sys.exit(124)
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            print("ctl: the guest closed the port", file=sys.stderr)
            sys.exit(125)
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            parts = line.decode(errors="replace").split(" ", 2)
            if len(parts) < 2 or parts[0] != cid:
                continue  # an answer to an earlier, abandoned command
            out = base64.b64decode(parts[2]) if len(parts) == 3 and parts[2] else b""
            sys.stdout.write(out.decode(errors="replace"))
            if out and not out.endswith(b"\n"):
                sys.stdout.write("\n")
            sys.exit(int(parts[1]))


if __name__ == "__main__":
    main()
