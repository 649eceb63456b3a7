package lockengine

import (
	"context"
	"errors"
	"time"
)

// Lock names form a tree. A name is a path of components separated by
// single slashes ("team/app/deploy"), with no leading or trailing slash;
// every component is a valid file name (not empty, ".", ".." and at most
// MaxNameLen bytes, no NUL). The path of a name's parent ("team/app") is
// a lock directory, created with Tree.Mkdir; top-level names live in the
// root directory, whose path is "". A name's identity is its full path:
// "team/deploy" and "deploy" are different locks. A path is either a lock
// directory or a lock name, never both: a name that is a directory cannot
// be locked (ErrIsDir), a directory cannot be created where a name is
// held or waited on (ErrExist), and a name whose parent directory does not
// exist cannot be locked (ErrNoDir).

// MaxDepth is the most components a name may have.
const MaxDepth = 64

// MaxPathLen is the longest name, in bytes, slashes included (PATH_MAX
// minus the terminating NUL).
const MaxPathLen = 4095

// Sentinel errors of the tree.
var (
	// ErrNoDir: the lock directory (or a name's parent directory) does
	// not exist.
	ErrNoDir = errors.New("lockengine: no such lock directory")
	// ErrIsDir: the name is a lock directory, not a lock.
	ErrIsDir = errors.New("lockengine: name is a lock directory")
	// ErrExist: Mkdir of a path that is already a directory, or that is
	// a name held or waited on.
	ErrExist = errors.New("lockengine: name exists")
	// ErrNotEmpty: Rmdir of a directory with subdirectories, or with
	// names held or waited on below it.
	ErrNotEmpty = errors.New("lockengine: lock directory not empty")
)

// DirAttr are the attributes of a lock directory, as chown(2) and chmod(2)
// set them. They are stored by the backend and shared by every process
// that shares it.
type DirAttr struct {
	UID, GID uint32
	// Mode holds the permission bits and the set-group-ID and sticky
	// bits (mask 07777); never file-type bits.
	Mode uint32
	// Mtime is when the directory was created or its attributes last
	// changed, as far as the backend records it.
	Mtime time.Time
}

// Tree manages the lock directories of a backend. Every Backend and every
// Engine implements it; an Engine's methods also account for the names it
// holds or queues itself. All paths are names in the sense above, except
// that "" (the root) is accepted by StatDir and ReadDir; the root's
// attributes belong to the mount, not to the backend, so StatDir("")
// returns the zero DirAttr. Methods may do bounded I/O (a system call, one
// etcd round trip bounded by the operation timeout) and honour ctx.
type Tree interface {
	// StatDir returns the attributes of lock directory path. It fails
	// with ErrNoDir when path is not a directory (absent, or a name).
	StatDir(ctx context.Context, path string) (DirAttr, error)
	// Mkdir creates lock directory path with attr. ErrNoDir: its parent
	// does not exist. ErrExist: path is a directory already or a name
	// held or waited on.
	Mkdir(ctx context.Context, path string, attr DirAttr) error
	// Rmdir removes lock directory path. ErrNoDir: it does not exist.
	// ErrNotEmpty: it has subdirectories, or names below it are held or
	// waited on (names merely used once before do not count).
	Rmdir(ctx context.Context, path string) error
	// SetDirAttr replaces the UID, GID and Mode of lock directory path
	// (Mtime is set by the backend). ErrNoDir: it does not exist.
	SetDirAttr(ctx context.Context, path string, attr DirAttr) error
	// ReadDir returns the names (last components) of the subdirectories
	// of lock directory path, sorted. ErrNoDir: it does not exist.
	ReadDir(ctx context.Context, path string) ([]string, error)
}
