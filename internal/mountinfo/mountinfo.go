// Package mountinfo reads the mount table of a Linux mount namespace in the
// format of /proc/PID/mountinfo (proc(5)) and answers the questions lockfs,
// its bench tool and its tests ask of it: what is mounted at a path, which
// mounts are lockfs mounts, what is mounted below a directory.
//
// It uses only the standard library and /proc; it does not mount or
// unmount anything.
package mountinfo

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// FUSESuperMagic is the f_type statfs(2) reports for every FUSE
// filesystem, lockfs included (FUSE_SUPER_MAGIC in linux/magic.h).
const FUSESuperMagic = 0x65735546

// LockfsType is the filesystem type a lockfs mount shows in mountinfo
// (fsnode.FSType; repeated here so this package stays free of FUSE code).
const LockfsType = "fuse.lockfs"

// SelfPath is the mount table of the calling process's mount namespace.
const SelfPath = "/proc/self/mountinfo"

// Mount is one line of a mountinfo file. Paths are unescaped.
type Mount struct {
	ID       int      // mount ID, unique among the namespace's current mounts
	ParentID int      // mount ID of the parent mount
	Dev      string   // MAJ:MIN of the filesystem; for FUSE the minor names the connection
	Root     string   // the directory of the filesystem mounted here
	Point    string   // the mountpoint
	Options  string   // per-mount options, e.g. "rw,nosuid,relatime"
	Optional []string // optional fields, e.g. "shared:4", "master:2"; nil when none
	FSType   string   // e.g. "ext4", "fuse.lockfs"
	Source   string   // filesystem-specific source, e.g. "/dev/sda1", "lockfs"
	Super    string   // per-superblock options; "" when the line has none
}

// IsLockfs reports whether m is a lockfs mount (FSType is LockfsType).
func (m Mount) IsLockfs() bool { return m.FSType == LockfsType }

// Parse parses the text of a mountinfo file, one Mount per non-empty line
// in the file's order (a later mount at the same point is stacked on an
// earlier one). A malformed line makes it return an error naming the line
// (and no mounts); it never panics.
func Parse(data []byte) ([]Mount, error) {
	var out []Mount
	for i, line := range bytes.Split(data, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		m, err := ParseLine(string(line))
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", i+1, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// ParseLine parses one line of a mountinfo file:
//
//	ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
//
// Fields are separated by spaces only: the kernel escapes space, tab,
// newline and backslash in paths, but writes every other byte (\r, \v,
// UTF-8 no-break space, ...) as it is. It returns an error when a field is
// missing or the IDs are not numbers.
func ParseLine(line string) (Mount, error) {
	f := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' })
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 {
		return Mount{}, fmt.Errorf("%q: want 6 fields, optional fields and a \" - \" separator", line)
	}
	if len(f) < sep+3 {
		return Mount{}, fmt.Errorf("%q: want a filesystem type and a source after the separator", line)
	}
	id, err := strconv.Atoi(f[0])
	if err != nil {
		return Mount{}, fmt.Errorf("%q: mount ID: %w", line, err)
	}
	parent, err := strconv.Atoi(f[1])
	if err != nil {
		return Mount{}, fmt.Errorf("%q: parent ID: %w", line, err)
	}
	m := Mount{
		ID:       id,
		ParentID: parent,
		Dev:      f[2],
		Root:     Unescape(f[3]),
		Point:    Unescape(f[4]),
		Options:  f[5],
		FSType:   Unescape(f[sep+1]),
		Source:   Unescape(f[sep+2]),
	}
	if sep > 6 {
		m.Optional = f[6:sep]
	}
	if len(f) > sep+3 {
		m.Super = strings.Join(f[sep+3:], " ")
	}
	return m, nil
}

// Unescape undoes the \ooo octal escapes the kernel writes for space, tab,
// newline and backslash in mountinfo paths. A backslash not followed by
// three octal digits (which the kernel never writes) is kept as it is.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ReadFile parses the mountinfo file at path (SelfPath, or
// /proc/PID/mountinfo for another process's namespace).
func ReadFile(path string) ([]Mount, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	ms, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ms, nil
}

// Read parses the calling process's mount table (SelfPath).
func Read() ([]Mount, error) { return ReadFile(SelfPath) }

// At returns the mounts of ms whose mountpoint is exactly path, bottom
// first (the last one is the one path resolves to).
func At(ms []Mount, path string) []Mount {
	var out []Mount
	for _, m := range ms {
		if m.Point == path {
			out = append(out, m)
		}
	}
	return out
}

// Under returns the mounts of ms at dir or below it, in ms's order.
func Under(ms []Mount, dir string) []Mount {
	prefix := strings.TrimSuffix(dir, "/") + "/"
	var out []Mount
	for _, m := range ms {
		if m.Point == dir || strings.HasPrefix(m.Point, prefix) {
			out = append(out, m)
		}
	}
	return out
}

// Lockfs returns the lockfs mounts of ms, in ms's order.
func Lockfs(ms []Mount) []Mount {
	var out []Mount
	for _, m := range ms {
		if m.IsLockfs() {
			out = append(out, m)
		}
	}
	return out
}

// IsMounted reports whether something is mounted exactly at path in the
// calling process's mount namespace. path must be clean and absolute, as
// mountinfo shows it; symlinks are not resolved.
func IsMounted(path string) (bool, error) {
	ms, err := Read()
	if err != nil {
		return false, err
	}
	return len(At(ms, path)) > 0, nil
}

// LockfsAt returns the lockfs mounts exactly at path in the calling
// process's mount namespace, bottom first (more than one when stacked).
func LockfsAt(path string) ([]Mount, error) {
	ms, err := Read()
	if err != nil {
		return nil, err
	}
	return Lockfs(At(ms, path)), nil
}
