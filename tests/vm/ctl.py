#!/usr/bin/env python3
"""Runs a shell script in a VM suite guest, through its virtio serial port "ctl" (a Unix
socket on the host): tests/vm/ctl.py SOCKET TIMEOUT SCRIPT. Prints the script's output
(stdout and stderr) and exits with its exit code; 124 if no answer came in TIMEOUT
seconds, 125 if the guest cannot be reached. A command the guest does not acknowledge
within ACK_WAIT is sent again (it was never read, so it never ran)."""

import base64
import os
import socket
import sys
import time


# how long a command may go unacknowledged before it is sent again: the guest's driver
# discards what arrives while the guest is closing the port (between two connections)
ACK_WAIT = 5.0


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        print("ctl: cannot reach the guest at %s: %s" % (path, e), file=sys.stderr)
        sys.exit(125)
    return s


def main():
    path, timeout, script = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    deadline = time.time() + timeout
    cid = "%d-%d" % (os.getpid(), int(time.time() * 1e6))
    # the guest kills the script a little before we give up on it
    secs = max(1, int(timeout) - 1)
    line = ("%s %d %s\n" % (cid, secs, base64.b64encode(script.encode()).decode())).encode()
    s, acked, sent, buf = None, False, 0.0, b""
    while True:
        now = time.time()
        if now >= deadline:
            what = "no answer" if acked else "not even an acknowledgement"
            print("ctl: %s within %.0f s to: %s" % (what, timeout, script), file=sys.stderr)
            sys.exit(124)
        if not acked and (s is None or now - sent >= ACK_WAIT):
            if s is not None:
                s.close()
            s, sent, buf = connect(path), now, b""
            s.sendall(line)
        wait = deadline - now if acked else min(deadline - now, sent + ACK_WAIT - now)
        s.settimeout(max(wait, 0.01))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            print("ctl: the guest closed the port", file=sys.stderr)
            sys.exit(125)
        buf += chunk
        while b"\n" in buf:
            got, buf = buf.split(b"\n", 1)
            parts = got.decode(errors="replace").split(" ", 2)
            if len(parts) < 2 or parts[0] != cid:
                continue  # an answer to an earlier, abandoned command
            if parts[1] == "ack":
                acked = True
                continue
            out = base64.b64decode(parts[2]) if len(parts) == 3 and parts[2] else b""
            sys.stdout.write(out.decode(errors="replace"))
            if out and not out.endswith(b"\n"):
                sys.stdout.write("\n")
            sys.exit(int(parts[1]))


if __name__ == "__main__":
    main()
