package lockengine

import (
	"context"
	"fmt"
)

// The Queue's Tree methods pass through to the backend. Until every
// backend keeps a tree, a backend without one has only the root.

var _ Tree = (*Queue)(nil)

func (q *Queue) tree() (Tree, error) {
	t, ok := q.b.(Tree)
	if !ok {
		return nil, fmt.Errorf("%w: backend keeps no lock directories", ErrNoDir)
	}
	return t, nil
}

// StatDir implements Tree.
func (q *Queue) StatDir(ctx context.Context, path string) (DirAttr, error) {
	if path == "" {
		return DirAttr{}, nil
	}
	t, err := q.tree()
	if err != nil {
		return DirAttr{}, err
	}
	return t.StatDir(ctx, path)
}

// Mkdir implements Tree.
func (q *Queue) Mkdir(ctx context.Context, path string, attr DirAttr) error {
	t, err := q.tree()
	if err != nil {
		return err
	}
	return t.Mkdir(ctx, path, attr)
}

// Rmdir implements Tree.
func (q *Queue) Rmdir(ctx context.Context, path string) error {
	t, err := q.tree()
	if err != nil {
		return err
	}
	return t.Rmdir(ctx, path)
}

// SetDirAttr implements Tree.
func (q *Queue) SetDirAttr(ctx context.Context, path string, attr DirAttr) error {
	t, err := q.tree()
	if err != nil {
		return err
	}
	return t.SetDirAttr(ctx, path, attr)
}

// ReadDir implements Tree.
func (q *Queue) ReadDir(ctx context.Context, path string) ([]string, error) {
	t, ok := q.b.(Tree)
	if !ok {
		if path == "" {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: backend keeps no lock directories", ErrNoDir)
	}
	return t.ReadDir(ctx, path)
}
