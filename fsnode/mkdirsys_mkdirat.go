//go:build linux && !(386 || amd64 || arm || mips || mipsle || mips64 || mips64le || ppc64 || ppc64le || s390x || sparc64)

package fsnode

import "golang.org/x/sys/unix"

// mkdirSyscalls are the system call numbers that make a directory, as
// /proc/PID/syscall shows them (see callerInMkdir). This architecture has
// mkdirat(2) only.
var mkdirSyscalls = []int64{unix.SYS_MKDIRAT}
