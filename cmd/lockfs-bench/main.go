// Command lockfs-bench measures lockfs against its baselines on this
// machine and prints the figures and ratios that docs/benchmarks.md
// reports.
//
//	lockfs-bench fs [flags]       through a mounted filesystem (root)
//	lockfs-bench etcd [flags]     the etcd backend against etcd's own mutex (root)
//	lockfs-bench soak [flags]     a chaos soak with an independent checker (root)
//
// The lock engine alone has Go benchmarks instead (go test -bench . -run
// '^$' ./lockengine/...). The fs benchmark compares lockfs with a
// minimal go-fuse filesystem and with flock(1); the etcd benchmark compares
// the etcd backend through the mount with concurrency.Mutex. Each prints
// its measurements and the ratios between them, with no verdict; run with -h
// for the flags.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: lockfs-bench fs|etcd|soak [flags]")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "fs":
		err = runFS(os.Args[2:])
	case "etcd":
		err = runEtcd(os.Args[2:])
	case "soak":
		err = runSoak(os.Args[2:])
	case "soak-client": // internal: a client process of soak
		err = runSoakClient(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lockfs-bench:", err)
		os.Exit(1)
	}
}

// cleanupOnSignal runs cleanup and exits 130 when SIGINT, SIGTERM or SIGHUP
// arrives, so that an interrupted run leaves no mount, daemon or temp dir
// behind. The returned function stops listening.
func cleanupOnSignal(cleanup func()) (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		sig, ok := <-sigs
		if !ok {
			return
		}
		fmt.Fprintf(os.Stderr, "lockfs-bench: %v: cleaning up\n", sig)
		cleanup()
		os.Exit(130)
	}()
	return func() {
		signal.Stop(sigs)
		close(sigs)
	}
}
