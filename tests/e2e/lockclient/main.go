// Command lockclient is the Go client of the lockfs end-to-end tests. It opens
// one lock file, reports the outcome on stdout, then obeys commands read line
// by line from stdin, so a test can hold a lock for as long as it likes and
// probe the descriptor.
//
// Usage:
//
//	lockclient [-mode w|a|rw|r] [-nonblock] [-dup] [-eintr-after DUR] PATH
//
// Modes: w = O_WRONLY|O_CREAT|O_TRUNC (shell ">"), a = O_WRONLY|O_CREAT|O_APPEND
// (">>"), rw = O_RDWR|O_CREAT ("<>"), r = O_RDONLY ("<").
//
// Output, one event per line; MONO is CLOCK_MONOTONIC in nanoseconds, the
// clock of Python's time.monotonic_ns and of the tests, so latencies can be
// computed across processes:
//
//	start PID MONO                 before open(2)
//	signalled MONO                 (-eintr-after) right before tgkill(2)
//	granted MONO ELAPSED_NS        open succeeded
//	error ERRNO MONO ELAPSED_NS    open failed (then the client exits 3)
//
// An open interrupted by a signal the client did not send itself (the Go
// runtime's preemption signal) is retried, as os.OpenFile does; EINTR is
// reported only after -eintr-after's signal.
//
// Commands on stdin, each answered with "ok [N]" or "error ERRNO":
//
//	write, read, fsync, fstat      one syscall on the lock descriptor
//	close                          answered "closed MONO", MONO taken right before close(2)
//	exit                           exit 0 without closing explicitly
//
// End of stdin closes the descriptor and exits 0.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

func mono() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return ts.Nano()
}

func errnoName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		if n := unix.ErrnoName(errno); n != "" {
			return n
		}
		return fmt.Sprintf("errno%d", int(errno))
	}
	return strings.ReplaceAll(err.Error(), " ", "_")
}

func main() {
	mode := flag.String("mode", "w", "open mode: w, a, rw or r")
	nonblock := flag.Bool("nonblock", false, "open with O_NONBLOCK")
	dup := flag.Bool("dup", false, "after the open, dup the descriptor and close the original")
	eintrAfter := flag.Duration("eintr-after", 0, "send SIGUSR1 to the opening thread after this long")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: lockclient [flags] PATH")
		os.Exit(2)
	}
	path := flag.Arg(0)

	var flags int
	switch *mode {
	case "w":
		flags = unix.O_WRONLY | unix.O_CREAT | unix.O_TRUNC
	case "a":
		flags = unix.O_WRONLY | unix.O_CREAT | unix.O_APPEND
	case "rw":
		flags = unix.O_RDWR | unix.O_CREAT
	case "r":
		flags = unix.O_RDONLY
	default:
		fmt.Fprintf(os.Stderr, "lockclient: bad -mode %q\n", *mode)
		os.Exit(2)
	}
	flags |= unix.O_CLOEXEC
	if *nonblock {
		flags |= unix.O_NONBLOCK
	}

	out := bufio.NewWriter(os.Stdout)
	say := func(format string, args ...any) {
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
	}

	// The open runs on a locked thread so that -eintr-after can signal
	// exactly the thread that is blocked in open(2); a process-directed
	// signal could land on any thread and interrupt nothing.
	runtime.LockOSThread()
	var signalled atomic.Bool // -eintr-after's signal was sent
	if *eintrAfter > 0 {
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, unix.SIGUSR1) // a handler (not SIG_IGN), so the signal interrupts open
		pid, tid := unix.Getpid(), unix.Gettid()
		go func() {
			time.Sleep(*eintrAfter)
			say("signalled %d", mono())
			signalled.Store(true)
			_ = unix.Tgkill(pid, tid, unix.SIGUSR1)
		}()
	}
	start := mono()
	say("start %d %d", os.Getpid(), start)
	fd, err := unix.Open(path, flags, 0o666)
	for err == unix.EINTR && !signalled.Load() {
		// Not our signal: the Go runtime's own (SIGURG, which preempts
		// goroutines) can land on this thread while it waits in open(2)
		// and end the wait with EINTR. Retry, as os.OpenFile, bash and
		// Python do; only -eintr-after's signal is an outcome to report.
		fd, err = unix.Open(path, flags, 0o666)
	}
	now := mono()
	if err != nil {
		say("error %s %d %d", errnoName(err), now, now-start)
		os.Exit(3)
	}
	say("granted %d %d", now, now-start)
	runtime.UnlockOSThread()

	if *dup {
		nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 10)
		if err != nil {
			say("error %s", errnoName(err))
			os.Exit(3)
		}
		_ = unix.Close(fd)
		fd = nfd
	}

	closed := false
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd := strings.TrimSpace(in.Text())
		var n int
		var err error
		switch cmd {
		case "":
			continue
		case "write":
			n, err = unix.Write(fd, []byte("x\n"))
		case "read":
			n, err = unix.Read(fd, make([]byte, 64))
		case "fsync":
			err = unix.Fsync(fd)
		case "fstat":
			var st unix.Stat_t
			err = unix.Fstat(fd, &st)
		case "close":
			t := mono()
			err = unix.Close(fd)
			closed = true
			if err == nil {
				say("closed %d", t)
				continue
			}
		case "exit":
			os.Exit(0)
		default:
			say("error unknown_command_%s", cmd)
			continue
		}
		if err != nil {
			say("error %s", errnoName(err))
			continue
		}
		say("ok %d", n)
	}
	if !closed {
		_ = unix.Close(fd)
	}
}
