// Command lockfs-bench measures lockfs against its baselines on this
// machine and prints the figures the README quotes.
//
//	lockfs-bench engine [-n N] [-handoffs N] [-names N] [-dir DIR]
//
// The engine benchmark compares an uncontended Acquire+Release with a bare
// open+flock(EX)+flock(UN)+close on the same directory, measures the
// handoff latency between two processes, and the memory held per name when
// many names are held at once.
package main

import (
	"fmt"
	"os"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: lockfs-bench engine [flags]")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "engine":
		err = runEngine(os.Args[2:])
	case childCmd:
		err = runHandoffChild(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lockfs-bench:", err)
		os.Exit(1)
	}
}
