package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The floor filesystem: the cheapest go-fuse filesystem that can stand in
// for lockfs. Every name exists (a stable inode per name), Open and Release
// do nothing, and it is mounted with the fastest options measured on this
// machine, so an open+close costs the OPEN and RELEASE round trips and
// nothing else. lockfs can only add to it.

// floorRoot is the root directory: Lookup succeeds for every name.
type floorRoot struct {
	fs.Inode
	lock bool // files are mutexes (see floorFile.sem)
}

var (
	_ fs.NodeLookuper  = (*floorRoot)(nil)
	_ fs.NodeGetattrer = (*floorRoot)(nil)
	_ fs.NodeOpener    = (*floorFile)(nil)
	_ fs.NodeGetattrer = (*floorFile)(nil)
	_ fs.NodeSetattrer = (*floorFile)(nil)
	_ fs.FileReleaser  = (*floorHandle)(nil)
)

func (r *floorRoot) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o1777
	out.Nlink = 2
	return 0
}

func (r *floorRoot) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch := r.GetChild(name)
	if ch == nil {
		f := &floorFile{}
		if r.lock {
			f.sem = make(chan struct{}, 1)
		}
		ch = r.NewInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG})
	}
	out.Mode = syscall.S_IFREG | 0o666
	out.Nlink = 1
	return ch, 0
}

// floorFile is a lock file that locks nothing, or, in the locking
// variant, an in-memory mutex: Open takes sem, Release gives it back. The
// locking variant is the cheapest possible lock with lockfs's semantics; it
// pays what the semantics cost (an OPEN that overtakes the previous
// RELEASE must wait for it) and nothing else.
type floorFile struct {
	fs.Inode
	sem chan struct{} // nil: Open and Release do nothing
}

func (f *floorFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o666
	out.Nlink = 1
	return 0
}

// Setattr accepts truncation (a shell's > without atomic O_TRUNC).
func (f *floorFile) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o666
	out.Nlink = 1
	return 0
}

// Open does nothing: it returns a handle (so that go-fuse routes RELEASE to
// it, as it does for lockfs) and asks the kernel not to send FLUSH.
func (f *floorFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if f.sem != nil {
		select {
		case f.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, 0, syscall.EINTR
		}
	}
	return &floorHandle{sem: f.sem}, fuse.FOPEN_NOFLUSH, 0
}

type floorHandle struct {
	sem chan struct{}
}

// Release does nothing (or unlocks the in-memory mutex).
func (h *floorHandle) Release(ctx context.Context) syscall.Errno {
	if h.sem != nil {
		<-h.sem
	}
	return 0
}

// floorOptions are the fastest mount options: entries and attributes cached
// for an hour (no LOOKUP or GETATTR per open), no xattrs (no GETXATTR
// security.capability per write-open), O_TRUNC inside OPEN (no SETATTR).
func floorOptions(debug bool) *fs.Options {
	timeout := time.Hour
	return &fs.Options{
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
		MountOptions: fuse.MountOptions{
			FsName:            "lockfs-bench-floor",
			Name:              "lockfs-bench-floor",
			AllowOther:        true, // as lockfs
			DisableXAttrs:     true,
			ExtraCapabilities: fuse.CAP_ATOMIC_O_TRUNC,
			DirectMountStrict: true,
			Debug:             debug,
		},
	}
}

// serveFloor mounts the floor filesystem at mnt, writes "ready\n" to
// stdout and serves until SIGTERM or SIGINT (or until the parent dies), then
// unmounts (lazily if files are still open). It runs in a child process of
// the benchmark: a process must not use a FUSE mount it serves.
func serveFloor(mnt string, lock, debug bool) error {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	srv, err := fs.Mount(mnt, &floorRoot{lock: lock}, floorOptions(debug))
	if err != nil {
		return fmt.Errorf("floor: mount %s: %w", mnt, err)
	}
	fmt.Println("ready")
	served := make(chan struct{})
	go func() { srv.Wait(); close(served) }()
	select {
	case <-sigs:
	case <-served:
		return nil
	}
	if err := srv.Unmount(); err != nil {
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("floor: unmount %s: %w", mnt, err)
		}
	}
	return nil
}
