package fsnode

import (
	"context"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// rawFS wraps the go-fuse node filesystem to pass what its node API drops:
// the lock owner of FLUSH, which says whose POSIX locks a close(2)
// releases. Everything else goes straight to the wrapped filesystem.
type rawFS struct {
	fuse.RawFileSystem
	fsys *filesystem
}

// Flush records the request's lock owner under its cancel channel, which
// go-fuse hands to the handle's Flush as fuse.Context.Cancel, for the
// duration of the call.
func (r *rawFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	r.fsys.flushOwners.Store(cancel, in.LockOwner)
	defer r.fsys.flushOwners.Delete(cancel)
	return r.RawFileSystem.Flush(cancel, in)
}

// flushOwner returns the lock owner of the FLUSH request whose handler
// runs with ctx.
func (f *filesystem) flushOwner(ctx context.Context) (uint64, bool) {
	c, ok := ctx.(*fuse.Context)
	if !ok {
		return 0, false
	}
	v, ok := f.flushOwners.Load(c.Cancel)
	if !ok {
		return 0, false
	}
	return v.(uint64), true
}
