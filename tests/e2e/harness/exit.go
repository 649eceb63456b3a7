package harness

import (
	"os/exec"
	"time"
)

// exit records how a started client process (Proc) ended.
type exit struct {
	done     chan struct{} // closed once the process has been reaped
	waitErr  error         // set before done is closed
	exitCode int           // set before done is closed; -1 when killed by a signal
}

func newExit() exit { return exit{done: make(chan struct{})} }

// reaped records the result of cmd.Wait and closes done.
func (x *exit) reaped(cmd *exec.Cmd, err error) {
	x.waitErr = err
	x.exitCode = cmd.ProcessState.ExitCode()
	close(x.done)
}

// Exited reports whether the process has exited and been reaped.
func (x *exit) Exited() bool {
	select {
	case <-x.done:
		return true
	default:
		return false
	}
}

// waitExit waits up to timeout for the process to be reaped and returns
// its exit code; ok is false on timeout.
func (x *exit) waitExit(timeout time.Duration) (code int, ok bool) {
	select {
	case <-x.done:
		return x.exitCode, true
	case <-time.After(timeout):
		return 0, false
	}
}
