package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"golang.org/x/sys/unix"
)

const breakUsage = `Usage: lockfs break [--mount M] NAME

Breaks the lock NAME (the same as rm M/NAME): its holders' descriptors fail
with EIO from then on (lockfs run stops its COMMAND), the fencing token is
bumped, and waiters are granted after the daemon's --lock-delay. Only root,
or a user who owns every lease currently held on NAME (a lone holder breaking
its own lock), may break it: a co-holder of a shared lock or of a semaphore
gets EPERM (it releases its own lease by closing its descriptor). During the
lock-delay a second break is refused (EBUSY). NAME is a lock name under the
mount (--mount, else $LOCKFS_MOUNT, else /mnt/locks) or an absolute path into
a lockfs mount.

Exit status: 0 broken, 1 not broken (not held: ENOENT; not allowed: EPERM;
in its lock-delay: EBUSY; not a lockfs mount), 2 usage error.
`

// runBreak implements 'lockfs break'.
func runBreak(args []string, stdout, stderr io.Writer) error {
	dir, name, err := parseBreakArgs(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, breakUsage)
		return nil
	}
	if err != nil {
		return err
	}
	if err := checkLockfsDir(dir); err != nil {
		return fmt.Errorf("break: %w", err)
	}
	path := filepath.Join(dir, name)
	switch err := unix.Unlink(path); {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("break %s: not held (%w)", path, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("break %s: only root or the owner of every lease on it may break it (%w)", path, err)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("break %s: already broken, in its lock-delay (%w)", path, err)
	default:
		return fmt.Errorf("break %s: %w", path, err)
	}
}

// parseBreakArgs parses the command line of 'lockfs break' into the mount
// directory and the lock name (see lockTarget). It returns flag.ErrHelp for
// --help, else a usageError.
func parseBreakArgs(args []string) (dir, name string, err error) {
	fl := flag.NewFlagSet("break", flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	mount := fl.String("mount", "", "")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", "", err
		}
		return "", "", usageErrorf("break: %w (see 'lockfs break --help')", err)
	}
	if fl.NArg() != 1 {
		return "", "", usageErrorf("break: want one NAME (see 'lockfs break --help')")
	}
	return lockTarget(*mount, fl.Arg(0))
}
