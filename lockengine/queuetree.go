package lockengine

import (
	"context"
	"fmt"
	"strings"
)

// The Queue's Tree methods check what only this Queue knows, the names it
// holds or queues itself, and leave the rest to the backend, which checks
// the holders of every process atomically with the change. A name whose
// Acquire starts after the Queue's check and before the backend's change
// is decided by the backend: the change or the acquisition fails (see
// Backend).

var _ Tree = (*Queue)(nil)

// validDir checks a directory path: a valid name, or "" (the root) when
// root is true.
func validDir(path string, root bool) error {
	if path == "" && root {
		return nil
	}
	return ValidateName(path)
}

// treeOpen returns ErrClosed once the Queue is closed.
func (q *Queue) treeOpen() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	return nil
}

// occupied returns the first name (in no particular order) below prefix
// that this Queue holds, waits for, has a lost lease of that is not
// released yet, or is calling the backend for; ok is false when there is
// none. It scans every entry under q.mu.
func (q *Queue) occupied(prefix string) (name string, ok bool) {
	q.mu.Lock()
	var es []*entry
	for n, e := range q.entries {
		if e.refs.Load() > 0 && strings.HasPrefix(n, prefix) {
			es = append(es, e)
		}
	}
	q.mu.Unlock()
	for _, e := range es {
		if e.occupied() {
			return e.name, true
		}
	}
	return "", false
}

// occupiedName reports whether this Queue holds, waits for, has a lost
// lease of or is calling the backend for name itself.
func (q *Queue) occupiedName(name string) bool {
	q.mu.Lock()
	e := q.entries[name]
	live := e != nil && e.refs.Load() > 0
	q.mu.Unlock()
	return live && e.occupied()
}

// occupied reports whether e is in use (see Queue.occupied).
func (e *entry) occupied() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.group != nil || len(e.waiters) > 0 || len(e.lost) > 0 || e.busy != notBusy
}

// StatDir implements Tree.
func (q *Queue) StatDir(ctx context.Context, path string) (DirAttr, error) {
	if err := validDir(path, true); err != nil {
		return DirAttr{}, err
	}
	if path == "" {
		return DirAttr{}, nil
	}
	if err := q.treeOpen(); err != nil {
		return DirAttr{}, err
	}
	return q.b.StatDir(ctx, path)
}

// Mkdir implements Tree. It fails with ErrExist while this Queue holds or
// queues path itself (a lost lease not yet released counts), then asks the
// backend, which checks other processes.
func (q *Queue) Mkdir(ctx context.Context, path string, attr DirAttr) error {
	if err := validDir(path, false); err != nil {
		return err
	}
	if err := q.treeOpen(); err != nil {
		return err
	}
	if q.occupiedName(path) {
		return fmt.Errorf("mkdir %q: %w: a lock of that name is held or waited for", path, ErrExist)
	}
	return q.b.Mkdir(ctx, path, attr)
}

// Rmdir implements Tree. It fails with ErrNotEmpty while this Queue holds
// or queues a name below path (a lost lease not yet released counts), then
// asks the backend, which checks other processes.
func (q *Queue) Rmdir(ctx context.Context, path string) error {
	if err := validDir(path, false); err != nil {
		return err
	}
	if err := q.treeOpen(); err != nil {
		return err
	}
	if n, ok := q.occupied(path + "/"); ok {
		return fmt.Errorf("rmdir %q: %w: lock %q is held or waited for", path, ErrNotEmpty, n)
	}
	return q.b.Rmdir(ctx, path)
}

// SetDirAttr implements Tree.
func (q *Queue) SetDirAttr(ctx context.Context, path string, attr DirAttr) error {
	if err := validDir(path, false); err != nil {
		return err
	}
	if err := q.treeOpen(); err != nil {
		return err
	}
	return q.b.SetDirAttr(ctx, path, attr)
}

// ReadDir implements Tree.
func (q *Queue) ReadDir(ctx context.Context, path string) ([]string, error) {
	if err := validDir(path, true); err != nil {
		return nil, err
	}
	if err := q.treeOpen(); err != nil {
		return nil, err
	}
	return q.b.ReadDir(ctx, path)
}
