// Command lockfs serves the lockfs filesystem: opening MOUNTPOINT/NAME takes
// the lock NAME (exclusive when opened for writing, shared when read-only)
// and the last close releases it.
//
// Usage:
//
//	lockfs mount [flags] MOUNTPOINT
//	lockfs status [--json] [MOUNTPOINT]
//	lockfs run [-s] [-n | -w DURATION] [-E CODE] [--kill-grace DUR] [--mount M] NAME -- COMMAND...
//	lockfs break [--mount M] NAME
//	lockfs version
//	lockfs help [mount|status|run|break]
//
// Exit codes: 0 success (including shutdown by SIGINT/SIGTERM), 1 runtime
// error, 2 usage error; 'lockfs run' has its own (see its help).
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
)

// Exit codes of the command.
const (
	exitOK      = 0 // success, or a clean shutdown on SIGINT/SIGTERM
	exitRuntime = 1 // the mount or the engine failed
	exitUsage   = 2 // bad command line or bad MOUNTPOINT
)

// version is the release version, set at build time with
// -ldflags "-X main.version=v1.2.3". Empty means: derive from build info.
var version = ""

// usageError marks an error that exits with exitUsage.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

const mainUsage = `lockfs: a filesystem of locks. Opening MOUNTPOINT/NAME takes the lock NAME
(exclusive when opened for writing, shared when read-only); the last close
of that open file releases it.

Usage:
  lockfs mount [flags] MOUNTPOINT        mount and serve in the foreground
  lockfs status [--json] [MOUNTPOINT]    show held and awaited locks (takes none)
  lockfs run [flags] NAME -- COMMAND...  run COMMAND while holding the lock NAME
  lockfs break [--mount M] NAME          break a stuck lock (root or a lone holder)
  lockfs version                         print the version
  lockfs help [mount|status|run|break]   print this help, or a command's

The client commands (status, run, break) use the mount given with --mount or
as MOUNTPOINT, else $LOCKFS_MOUNT, else /mnt/locks.
`

func main() {
	if os.Getenv(debugProfileEnv) != "" {
		// Before anything allocates, as the runtime asks (see
		// profileOnSignal).
		runtime.MemProfileRate = 1
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line args and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, mainUsage)
		return exitUsage
	}
	switch args[0] {
	case "mount":
		return exitCode(runMount(args[1:], stdout, stderr), stderr)
	case "status":
		return exitCode(runStatus(args[1:], stdout, stderr), stderr)
	case "run":
		return runRun(args[1:], stdout, stderr)
	case supervisorCmd:
		return runSupervisor(args[1:], stderr)
	case "break":
		return exitCode(runBreak(args[1:], stdout, stderr), stderr)
	case "version", "--version", "-version":
		if len(args) > 1 {
			return exitCode(usageErrorf("version takes no arguments"), stderr)
		}
		fmt.Fprintln(stdout, versionString())
		return exitOK
	case "help", "--help", "-help", "-h":
		if len(args) > 1 {
			switch args[1] {
			case "mount":
				fmt.Fprint(stdout, mountUsage())
				return exitOK
			case "status":
				fmt.Fprint(stdout, statusUsage)
				return exitOK
			case "run":
				fmt.Fprint(stdout, runUsage)
				return exitOK
			case "break":
				fmt.Fprint(stdout, breakUsage)
				return exitOK
			}
		}
		fmt.Fprint(stdout, mainUsage)
		return exitOK
	}
	fmt.Fprintf(stderr, "lockfs: unknown command %q\n\n%s", args[0], mainUsage)
	return exitUsage
}

// exitCode prints err (if any) and maps it to an exit code.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "lockfs: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitRuntime
}

// versionString is the line printed by 'lockfs version'.
func versionString() string {
	v := version
	if v == "" {
		v = "devel"
		if bi, ok := debug.ReadBuildInfo(); ok {
			if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
				v = bi.Main.Version
			} else {
				var rev, dirty string
				for _, s := range bi.Settings {
					switch s.Key {
					case "vcs.revision":
						rev = s.Value
					case "vcs.modified":
						if s.Value == "true" {
							dirty = "-dirty"
						}
					}
				}
				if len(rev) > 12 {
					rev = rev[:12]
				}
				if rev != "" {
					v = "devel-" + rev + dirty
				}
			}
		}
	}
	return fmt.Sprintf("lockfs %s %s %s/%s", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
