package mountinfo

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// Fuzz targets for the mountinfo parser. Run one longer with
//
//	go test -run '^$' -fuzz '^FuzzParseLine$' -fuzztime 1m ./internal/mountinfo/

// escape is what the kernel does to paths, the filesystem type and the
// source in mountinfo (seq_path, mangle): space, tab, newline and backslash
// become \ooo.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, `\%03o`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FuzzUnescape: Unescape undoes escape, never grows a string, and leaves a
// string without a backslash alone.
func FuzzUnescape(f *testing.F) {
	for _, s := range []string{"/plain", "/a b", "/a\tb\nc", `/back\slash`, `\040`, `\`, `a\0`, `\400`, `\777`, "\x00",
		`\\\`, "ünï cödé", "\r\v\f\u0085\u00a0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got := Unescape(escape(s)); got != s {
			t.Fatalf("Unescape(escape(%q)) = %q", s, got)
		}
		u := Unescape(s)
		if len(u) > len(s) {
			t.Fatalf("Unescape(%q) = %q: longer", s, u)
		}
		if !strings.Contains(s, `\`) && u != s {
			t.Fatalf("Unescape(%q) = %q without a backslash", s, u)
		}
	})
}

// FuzzParse: Parse never panics, and returns an error or one mount per
// non-blank line.
func FuzzParse(f *testing.F) {
	f.Add([]byte("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n" +
		"44 27 0:40 /sub /tmp/with\\040space\\134x rw shared:5 master:3 - fuse.lockfs lock\\011fs rw\n\n" +
		"45 27 0:41 / /tmp/lt/m rw - fuse.lockfs lockfs\n"))
	for _, s := range []string{"", "\n", "garbage line", "22 1 8:1 / / rw -", "- - - - - - - - -", `\`,
		"1 2 3 4 5 6 - a b", "1 2 3 4 5 6 7 8 9 - a b c d", "x 1 8:1 / / rw - ext4 /dev/sda1 rw",
		"22 1 8:1 / /a\rb rw - ext4 /dev/sda1 rw", "22 1 8:1 / /a\u00a0b rw - ext4 /dev/sda1 rw",
		"22 1 8:1 / / rw - ext4 /dev/sda1 rw\r\n", "+1 -2 0:1 / / rw - t s"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ms, err := Parse(data)
		if err != nil {
			if ms != nil {
				t.Fatalf("Parse error %v with %d mounts", err, len(ms))
			}
			return
		}
		lines := 0
		for _, l := range strings.Split(string(data), "\n") {
			if strings.TrimSpace(l) != "" {
				lines++
			}
		}
		if len(ms) != lines {
			t.Fatalf("%d mounts from %d lines", len(ms), lines)
		}
	})
}

// FuzzParseLine formats a mount the way the kernel writes it and parses
// it back: every field must come back as it was, whatever bytes the
// paths, type and source hold (the kernel escapes only space, tab, newline
// and backslash in them).
func FuzzParseLine(f *testing.F) {
	f.Add(22, 1, "8:1", "/", "/", "rw,relatime", "shared:1", "ext4", "/dev/sda1", "rw")
	f.Add(44, 27, "0:40", "/sub", "/tmp/with space\\x", "rw", "shared:5 master:3", "fuse.lockfs", "lock\tfs", "")
	f.Add(1, 0, "0:1", "/a\rb", "/m\u00a0n", "rw", "", "fuse.lockfs", "lockfs", "rw,user_id=0")
	f.Add(1, 0, "0:1", "-", "/-", "rw", "", "-", "-", "a b")
	f.Add(-1, 0, "0:1", "/\v\f", "/\u0085x", "rw", "", "t", "\x00", "")
	f.Fuzz(func(t *testing.T, id, parent int, dev, root, point, opts, optional, fstype, source, super string) {
		// The fields the kernel does not escape never hold white
		// space in practice; the escaped ones are never empty.
		field := func(s, def string) string {
			s = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' }), "")
			if s == "" {
				return def
			}
			return s
		}
		dev, opts = field(dev, "0:1"), field(opts, "rw")
		var opt []string
		for _, o := range strings.Fields(optional) {
			if o != "-" {
				opt = append(opt, o)
			}
		}
		sup := strings.Fields(super)
		for _, p := range []*string{&root, &point, &fstype, &source} {
			if *p == "" {
				*p = "none"
			}
		}
		want := Mount{ID: id, ParentID: parent, Dev: dev, Root: root, Point: point, Options: opts, Optional: opt,
			FSType: fstype, Source: source, Super: strings.Join(sup, " ")}
		fields := []string{fmt.Sprint(id), fmt.Sprint(parent), dev, escape(root), escape(point), opts}
		fields = append(fields, opt...)
		fields = append(fields, "-", escape(fstype), escape(source))
		fields = append(fields, sup...)
		line := strings.Join(fields, " ")
		got, err := ParseLine(line)
		if err != nil {
			t.Fatalf("ParseLine(%q): %v", line, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("ParseLine(%q) =\n%#v, want\n%#v", line, got, want)
		}
		ms, err := Parse([]byte(line + "\n" + line + "\n"))
		if err != nil || len(ms) != 2 || !reflect.DeepEqual(ms[1], want) {
			t.Fatalf("Parse of two lines %q: %v, %#v", line, err, ms)
		}
	})
}
