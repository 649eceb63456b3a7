#!/usr/bin/env python3
"""Python client of the lockfs end-to-end tests.

usage: pyclient.py [--mode w|a|rw|r] [--nonblock] [--alarm SECS] PATH

Opens PATH with os.open and reports on stdout, one event per line
(MONO is time.monotonic_ns(), i.e. CLOCK_MONOTONIC, shared with the tests):

  start PID MONO
  granted MONO ELAPSED_NS
  error ERRNO MONO ELAPSED_NS            open failed (exit 3)
  interrupted SIGNAME MONO LATENCY_NS    a signal ended the wait (exit 4);
                                         LATENCY_NS is measured from the
                                         expiry of --alarm (else -1)

--alarm SECS arms ITIMER_REAL; its SIGALRM handler raises, which ends the
blocked open (PEP 475 only retries when the handler returns). SIGINT ends
it through KeyboardInterrupt. Then commands on stdin as for lockclient:
write, read, fsync, close ("closed MONO"); end of input closes and exits 0.
"""
import argparse
import errno
import os
import signal
import sys
import time


class Alarm(Exception):
    pass


def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="w", choices=["w", "a", "rw", "r"])
    p.add_argument("--nonblock", action="store_true")
    p.add_argument("--alarm", type=float, default=0)
    p.add_argument("path")
    a = p.parse_args()

    flags = {
        "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
        "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        "rw": os.O_RDWR | os.O_CREAT,
        "r": os.O_RDONLY,
    }[a.mode] | os.O_CLOEXEC
    if a.nonblock:
        flags |= os.O_NONBLOCK

    def on_alarm(signum, frame):
        raise Alarm()

    signal.signal(signal.SIGALRM, on_alarm)
    # Python leaves SIGINT ignored if it was ignored at start-up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    start = time.monotonic_ns()
    say("start", os.getpid(), start)
    expiry = -1
    try:
        if a.alarm > 0:
            armed = time.monotonic_ns()
            signal.setitimer(signal.ITIMER_REAL, a.alarm)
            expiry = armed + int(a.alarm * 1e9)
        fd = os.open(a.path, flags, 0o666)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except Alarm:
        now = time.monotonic_ns()
        say("interrupted", "SIGALRM", now, now - expiry)
        sys.exit(4)
    except KeyboardInterrupt:
        now = time.monotonic_ns()
        say("interrupted", "SIGINT", now, -1)
        sys.exit(4)
    except OSError as e:
        now = time.monotonic_ns()
        say("error", errno.errorcode.get(e.errno, "errno%d" % e.errno), now, now - start)
        sys.exit(3)
    now = time.monotonic_ns()
    say("granted", now, now - start)

    closed = False
    for line in sys.stdin:
        cmd = line.strip()
        if not cmd:
            continue
        try:
            if cmd == "write":
                say("ok", os.write(fd, b"x\n"))
            elif cmd == "read":
                say("ok", len(os.read(fd, 64)))
            elif cmd == "fsync":
                os.fsync(fd)
                say("ok", 0)
            elif cmd == "close":
                t = time.monotonic_ns()
                os.close(fd)
                closed = True
                say("closed", t)
            else:
                say("error", "unknown_command_" + cmd)
        except OSError as e:
            say("error", errno.errorcode.get(e.errno, "errno%d" % e.errno))
    if not closed:
        os.close(fd)


if __name__ == "__main__":
    main()
