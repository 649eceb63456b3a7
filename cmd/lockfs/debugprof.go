package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"syscall"
)

// debugProfileEnv names a directory: when set for 'lockfs mount', SIGUSR1
// makes the daemon force a GC and write a heap profile, a goroutine dump
// and its runtime memory statistics there. A measurement aid for
// docs/benchmarks.md (where a held name's and a blocked opener's bytes
// go), not a user-facing feature: nothing listens for SIGUSR1 without it.
// With it, the heap profile records every allocation (main sets
// runtime.MemProfileRate to 1 first thing), which slows allocation down.
const debugProfileEnv = "LOCKFS_DEBUG_PROFILE_DIR"

// profileOnSignal writes the profiles of debugProfileEnv on every SIGUSR1
// until stop is closed. It does nothing when the variable is unset.
func profileOnSignal(stop <-chan struct{}) {
	dir := os.Getenv(debugProfileEnv)
	if dir == "" {
		return
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	for n := 1; ; n++ {
		select {
		case <-stop:
			return
		case <-sigs:
		}
		if err := writeProfiles(dir, n); err != nil {
			slog.Warn("debug profile", "dir", dir, "err", err)
		}
	}
}

// writeProfiles writes heap-N.pprof, goroutine-N.txt and memstats-N.txt in
// dir.
func writeProfiles(dir string, n int) error {
	runtime.GC()
	write := func(name string, f func(*os.File) error) error {
		// The daemon runs as root: never follow a symlink planted in
		// dir, nor write over a file that is already there.
		out, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf(name, n)),
			os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		if err := f(out); err != nil {
			_ = out.Close()
			return err
		}
		return out.Close()
	}
	if err := write("heap-%d.pprof", func(f *os.File) error { return pprof.Lookup("heap").WriteTo(f, 0) }); err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	if err := write("goroutine-%d.txt", func(f *os.File) error { return pprof.Lookup("goroutine").WriteTo(f, 1) }); err != nil {
		return fmt.Errorf("goroutine dump: %w", err)
	}
	return write("memstats-%d.txt", func(f *os.File) error {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		_, err := fmt.Fprintf(f, "HeapAlloc %d\nHeapInuse %d\nHeapIdle %d\nHeapReleased %d\nHeapObjects %d\n"+
			"StackInuse %d\nStackSys %d\nMSpanInuse %d\nMCacheInuse %d\nGCSys %d\nOtherSys %d\nSys %d\nNumGoroutine %d\n",
			m.HeapAlloc, m.HeapInuse, m.HeapIdle, m.HeapReleased, m.HeapObjects,
			m.StackInuse, m.StackSys, m.MSpanInuse, m.MCacheInuse, m.GCSys, m.OtherSys, m.Sys, runtime.NumGoroutine())
		return err
	})
}
