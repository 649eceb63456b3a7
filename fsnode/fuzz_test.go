package fsnode

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lockfs/lockfs/lockengine"
)

// Fuzz targets for everything of fsnode that parses what callers send:
// lock names, path components (.try, .timeout/SECS), xattr names and the
// user.lockfs.limit value. Run one longer with
//
//	go test -run '^$' -fuzz '^FuzzParseTimeout$' -fuzztime 1m ./fsnode/

// FuzzValidLockName: a name is a lock name exactly when it is one path
// component that is not reserved; every rejection wraps ErrInvalidName or
// ErrNameTooLong and maps to EINVAL or ENAMETOOLONG.
func FuzzValidLockName(f *testing.F) {
	for _, s := range []string{"x", "", ".", "..", "...", ".try", ".timeout", ".try2", "a/b", "/", "a\x00b",
		"sp ace", "tab\tnl\n", "ünïcödé", "\xff\xfe", strings.Repeat("n", 255), strings.Repeat("n", 256),
		strings.Repeat("/", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := validLockName(name)
		engErr := lockengine.ValidateComponent(name)
		want := name != "" && name != "." && name != ".." && len(name) <= lockengine.MaxNameLen &&
			!strings.ContainsAny(name, "/\x00")
		if (engErr == nil) != want {
			t.Fatalf("ValidateComponent(%q) = %v, want valid=%v", name, engErr, want)
		}
		reserved := name == TryDir || name == TimeoutDir
		if (err == nil) != (want && !reserved) {
			t.Fatalf("validLockName(%q) = %v, want valid=%v", name, err, want && !reserved)
		}
		if err == nil {
			if filepath.Clean(name) != name || filepath.Base(name) != name {
				t.Fatalf("valid name %q is not a single clean path component", name)
			}
			return
		}
		tooLong := errors.Is(err, lockengine.ErrNameTooLong)
		if tooLong == errors.Is(err, lockengine.ErrInvalidName) {
			t.Fatalf("validLockName(%q) = %v: want exactly one of ErrInvalidName, ErrNameTooLong", name, err)
		}
		if tooLong != (len(name) > lockengine.MaxNameLen) {
			t.Fatalf("validLockName(%q) (%d bytes) = %v", name, len(name), err)
		}
		wantErrno := syscall.EINVAL
		if tooLong {
			wantErrno = syscall.ENAMETOOLONG
		}
		if e := Errno(err); e != wantErrno {
			t.Fatalf("Errno(validLockName(%q)) = %v, want %v", name, e, wantErrno)
		}
	})
}

// FuzzParseTimeout: accepted timeouts are not negative and survive a round
// trip through Duration.String (lockfs run -w writes .timeout/D.String()/);
// errors wrap ErrInvalidName and map to EINVAL.
func FuzzParseTimeout(f *testing.F) {
	for _, s := range []string{"0", "2", "0.5", "500ms", "1m30s", "0s", "100us", "1.5µs", "3600", "0.0001",
		"", "abc", "-1", "-0", "-0.0000000001", "-1ns", "-0.1ns", "NaN", "Inf", "-Inf", "1e300", "1e-300",
		"9223372036", "9223372036.854775807", "9223372036.854775808", "2562047h47m16.854775807s",
		"2562047h47m16.854775808s", "0x1p4", "+5", "5 s", "1x", "1_000", "1e9", ".5", "5.", "1h-1s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseTimeout(s)
		if err != nil {
			if !errors.Is(err, lockengine.ErrInvalidName) {
				t.Fatalf("ParseTimeout(%q) = %v: does not wrap ErrInvalidName", s, err)
			}
			if e := Errno(err); e != syscall.EINVAL {
				t.Fatalf("Errno(ParseTimeout(%q)) = %v, want EINVAL", s, e)
			}
			return
		}
		if d < 0 {
			t.Fatalf("ParseTimeout(%q) = %v: negative", s, d)
		}
		back, err := ParseTimeout(d.String())
		if err != nil || back != d {
			t.Fatalf("ParseTimeout(%q) = %v, but ParseTimeout(%q) = %v, %v", s, d, d.String(), back, err)
		}
		p := timeoutPolicy(d)
		if (p.kind == waitTry) != (d == 0) || (p.kind == waitTimeout && p.timeout != d) {
			t.Fatalf("timeoutPolicy(%v) = %v", d, p)
		}
	})
}

// FuzzLookupPath walks a slash-separated path from the root of a (not
// mounted) node tree the way the kernel does, one Lookup per component.
// NAME, .try/NAME and .timeout/SECS/NAME reach a lock file with the
// matching policy; everything else fails with the errno of the bad
// component, never with a nil inode and no error.
func FuzzLookupPath(f *testing.F) {
	for _, s := range []string{"x", ".try/x", ".timeout/2/x", ".timeout/0/x", ".timeout/500ms/x",
		".timeout/-1/x", ".timeout/x", ".try/.try", ".try/.timeout/1/x", ".timeout/1/.try", ".timeout/1/.timeout",
		"x/y", ".", "..", ".try/..", ".timeout/NaN/x", "a\x00b", strings.Repeat("n", 256), ".timeout/1e300/x",
		".try/" + strings.Repeat("n", 255)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		fx := newFixture(t)
		root := newRoot(fx.fsys.eng, fx.fsys.log, nil, nil, time.Second)
		fs.NewNodeFS(root, &fs.Options{})
		ctx := context.Background()

		// The model: what the path should resolve to.
		comps := strings.Split(path, "/")
		var (
			wantErrno syscall.Errno
			wantAt    int // index of the component that fails, or of the lock file
			wantPol   policy
		)
		switch {
		case comps[0] == TryDir && len(comps) > 1:
			wantAt, wantPol, wantErrno = 1, policy{kind: waitTry}, Errno(validLockName(comps[1]))
		case comps[0] == TimeoutDir && len(comps) > 1:
			d, err := ParseTimeout(comps[1])
			wantAt, wantErrno = 1, Errno(err)
			if err == nil && len(comps) > 2 {
				wantAt, wantPol, wantErrno = 2, timeoutPolicy(d), Errno(validLockName(comps[2]))
			}
		case comps[0] == TryDir || comps[0] == TimeoutDir:
			wantAt = -1 // a directory
		default:
			wantAt, wantErrno = 0, Errno(validLockName(comps[0]))
		}

		var cur fs.InodeEmbedder = root
		for i, c := range comps {
			var out fuse.EntryOut
			var ch *fs.Inode
			var errno syscall.Errno
			switch n := cur.(type) {
			case *lockDir:
				ch, errno = n.Lookup(ctx, c, &out)
			case *timeoutDir:
				ch, errno = n.Lookup(ctx, c, &out)
			case *lockNode:
				// A lock file is not a directory: the kernel stops
				// here (ENOTDIR) without asking the filesystem.
				if i-1 != wantAt || wantErrno != 0 {
					t.Fatalf("%q: reached lock file %q at component %d, want component %d, errno %v",
						path, n.name, i-1, wantAt, wantErrno)
				}
				return
			default:
				t.Fatalf("%q: component %d: unexpected node %T", path, i, n)
			}
			if errno != 0 {
				if ch != nil {
					t.Fatalf("%q: Lookup(%q) = inode and %v", path, c, errno)
				}
				if i != wantAt || errno != wantErrno {
					t.Fatalf("%q: Lookup(%q) at component %d = %v, want %v at component %d", path, c, i, errno, wantErrno, wantAt)
				}
				return
			}
			if ch == nil {
				t.Fatalf("%q: Lookup(%q) = nil inode without an error", path, c)
			}
			cur = ch.Operations()
			if ln, ok := cur.(*lockNode); ok {
				if i != wantAt || wantErrno != 0 || ln.name != c || ln.policy != wantPol {
					t.Fatalf("%q: component %d is lock file %q policy %v, want component %d policy %v errno %v",
						path, i, ln.name, ln.policy, wantAt, wantPol, wantErrno)
				}
				if out.Mode != syscall.S_IFREG|0o666 {
					t.Fatalf("%q: lock file mode %#o", path, out.Mode)
				}
			} else if out.Mode&syscall.S_IFMT != syscall.S_IFDIR {
				t.Fatalf("%q: directory %q has mode %#o", path, c, out.Mode)
			}
		}
		if _, ok := cur.(*lockNode); !ok && wantAt >= 0 && wantErrno == 0 && wantAt < len(comps)-1 {
			t.Fatalf("%q: ended in %T, want a lock file at component %d", path, cur, wantAt)
		}
	})
}

// FuzzParseLimit: the user.lockfs.limit value parses to an integer that
// formats back to the same number; errors wrap ErrInvalidLimit (EINVAL).
func FuzzParseLimit(f *testing.F) {
	for _, s := range []string{"1", "3", "3\n", " 7 ", "0", "-1", "+4", "007", "", "x", "1.5", "9223372036854775807",
		"9223372036854775808", "-9223372036854775808", "1e3", "0x10", "\x00", "2\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := parseLimit(data)
		if err != nil {
			if !errors.Is(err, lockengine.ErrInvalidLimit) || Errno(err) != syscall.EINVAL {
				t.Fatalf("parseLimit(%q) = %v: want an ErrInvalidLimit (EINVAL)", data, err)
			}
			return
		}
		s := strings.TrimSpace(string(data))
		if strings.TrimLeft(s, "+-0123456789") != "" {
			t.Fatalf("parseLimit(%q) = %d: accepted more than sign and digits", data, n)
		}
		back, err := parseLimit([]byte(strconv.Itoa(n)))
		if err != nil || back != n {
			t.Fatalf("parseLimit(%q) = %d, but parseLimit(%q) = %d, %v", data, n, strconv.Itoa(n), back, err)
		}
	})
}

// FuzzXattr asks a lock file in each state (free, held exclusive, held
// shared, lost) for arbitrary attribute names with arbitrary buffer sizes,
// and sets arbitrary attributes: no panic, ENODATA outside user.lockfs.*,
// the size protocol (size query, ERANGE) kept, and setxattr only accepted
// for a valid limit by root.
func FuzzXattr(f *testing.F) {
	for _, attr := range append(append([]string{}, xattrNames...), XattrCause, "security.capability", "",
		XattrPrefix, XattrPrefix+"nope", "user.lockfs", "trusted.x", XattrLimit+"\x00", "USER.LOCKFS.TOKEN") {
		f.Add(attr, uint16(0), uint8(0), []byte("2"))
		f.Add(attr, uint16(3), uint8(1), []byte("0"))
		f.Add(attr, uint16(4096), uint8(3), []byte("x"))
	}
	f.Add(XattrLimit, uint16(64), uint8(2|4), []byte(" 3\n"))
	f.Add(XattrLimit, uint16(1), uint8(1|4), []byte("9223372036854775807"))
	f.Fuzz(func(t *testing.T, attr string, destLen uint16, state uint8, value []byte) {
		fx := newFixture(t)
		const name = "x"
		n := fx.node(name, policy{})
		owner := callerCtx(1000, 100, 4242)
		switch state % 4 {
		case 1:
			fh, _, errno := n.Open(owner, syscall.O_WRONLY)
			if errno != 0 {
				t.Fatalf("open: %v", errno)
			}
			defer fh.(*handle).Release(context.Background())
		case 2:
			for range 2 {
				fh, _, errno := n.Open(owner, syscall.O_RDONLY)
				if errno != 0 {
					t.Fatalf("open: %v", errno)
				}
				defer fh.(*handle).Release(context.Background())
			}
		case 3:
			fh, _, errno := n.Open(owner, syscall.O_WRONLY)
			if errno != 0 {
				t.Fatalf("open: %v", errno)
			}
			h := fh.(*handle)
			defer h.Release(context.Background())
			fx.b.lose(name)
			for end := time.Now().Add(deadline); h.lease().Err() == nil; {
				if time.Now().After(end) {
					t.Fatal("lease not lost")
				}
				time.Sleep(time.Millisecond)
			}
		}
		lost := state%4 == 3
		ctx := context.Background()
		dest := make([]byte, destLen%512)

		// Getxattr: the size, then the value into dest.
		sz, errno := n.Getxattr(ctx, attr, nil)
		known := attr == XattrLimit || (attr == XattrCause && lost)
		for _, x := range xattrNames {
			known = known || attr == x
		}
		switch {
		case !strings.HasPrefix(attr, XattrPrefix) && (errno != syscall.ENODATA || sz != 0):
			t.Fatalf("Getxattr(%q) = %d, %v: want ENODATA outside %s", attr, sz, errno, XattrPrefix)
		case known && errno != 0:
			t.Fatalf("Getxattr(%q) = %v in state %d", attr, errno, state%4)
		case !known && errno != syscall.ENODATA:
			t.Fatalf("Getxattr(%q) = %d, %v: want ENODATA", attr, sz, errno)
		}
		if errno == 0 {
			got, errno := n.Getxattr(ctx, attr, dest)
			checkSizeProtocol(t, "Getxattr("+strconv.Quote(attr)+")", sz, len(dest), got, errno)
		}

		// Listxattr: every name carries the prefix; the cause only when lost.
		sz, errno = n.Listxattr(ctx, nil)
		if errno != 0 {
			t.Fatalf("Listxattr size: %v", errno)
		}
		full := make([]byte, sz)
		if got, errno := n.Listxattr(ctx, full); errno != 0 || got != sz {
			t.Fatalf("Listxattr into %d bytes = %d, %v", sz, got, errno)
		}
		names := strings.Split(strings.TrimSuffix(string(full), "\x00"), "\x00")
		hasCause := false
		for _, x := range names {
			if !strings.HasPrefix(x, XattrPrefix) {
				t.Fatalf("Listxattr lists %q", x)
			}
			hasCause = hasCause || x == XattrCause
		}
		if hasCause != lost || len(names) != len(xattrNames)+map[bool]int{true: 1}[lost] {
			t.Fatalf("Listxattr in state %d = %q", state%4, names)
		}
		got, errno := n.Listxattr(ctx, dest)
		checkSizeProtocol(t, "Listxattr", sz, len(dest), got, errno)

		// Setxattr: EPERM unless root sets the limit; then a valid
		// limit reads back, anything else is EINVAL.
		if errno := n.Setxattr(owner, attr, value, 0); errno != syscall.EPERM {
			t.Fatalf("Setxattr(%q, %q) by uid 1000 = %v, want EPERM", attr, value, errno)
		}
		errno = n.Setxattr(callerCtx(0, 0, 1), attr, value, 0)
		if attr != XattrLimit {
			if errno != syscall.EPERM {
				t.Fatalf("Setxattr(%q) by root = %v, want EPERM", attr, errno)
			}
			return
		}
		limit, err := parseLimit(value)
		if err != nil || limit < 1 {
			if errno != syscall.EINVAL {
				t.Fatalf("Setxattr(limit, %q) = %v, want EINVAL", value, errno)
			}
			return
		}
		if errno != 0 {
			t.Fatalf("Setxattr(limit, %q) = %v", value, errno)
		}
		buf := make([]byte, 64)
		nb, errno := n.Getxattr(ctx, XattrLimit, buf)
		if errno != 0 || string(buf[:nb]) != strconv.Itoa(limit) {
			t.Fatalf("limit set to %q reads back as %q, %v", value, buf[:nb], errno)
		}
	})
}

// checkSizeProtocol checks a getxattr/listxattr answer into a buffer of
// destLen bytes for a value of size bytes.
func checkSizeProtocol(t *testing.T, what string, size uint32, destLen int, got uint32, errno syscall.Errno) {
	t.Helper()
	switch {
	case destLen == 0:
		if errno != 0 || got != size {
			t.Fatalf("%s size query = %d, %v, want %d", what, got, errno, size)
		}
	case destLen < int(size):
		if errno != syscall.ERANGE {
			t.Fatalf("%s into %d bytes = %d, %v, want ERANGE for %d", what, destLen, got, errno, size)
		}
	default:
		if errno != 0 || got != size {
			t.Fatalf("%s into %d bytes = %d, %v, want %d", what, destLen, got, errno, size)
		}
	}
}
