package mountinfo

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lockfs/lockfs/fsnode"
)

func TestParse(t *testing.T) {
	data := []byte(`22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
43 27 0:39 / /tmp/lt/m rw,nosuid,nodev,relatime - fuse.lockfs lockfs rw,user_id=0,group_id=0,allow_other
44 27 0:40 /sub /tmp/with\040space\134x rw shared:5 master:3 - fuse.lockfs lock\011fs rw

45 27 0:41 / /tmp/lt/m rw - fuse.lockfs lockfs
`)
	got, err := Parse(data)
	require.NoError(t, err)
	require.Len(t, got, 4)
	assert.Equal(t, Mount{ID: 22, ParentID: 1, Dev: "8:1", Root: "/", Point: "/", Options: "rw,relatime",
		Optional: []string{"shared:1"}, FSType: "ext4", Source: "/dev/sda1", Super: "rw"}, got[0])
	assert.Equal(t, Mount{ID: 43, ParentID: 27, Dev: "0:39", Root: "/", Point: "/tmp/lt/m",
		Options: "rw,nosuid,nodev,relatime", FSType: "fuse.lockfs", Source: "lockfs",
		Super: "rw,user_id=0,group_id=0,allow_other"}, got[1])
	assert.Equal(t, Mount{ID: 44, ParentID: 27, Dev: "0:40", Root: "/sub", Point: `/tmp/with space\x`, Options: "rw",
		Optional: []string{"shared:5", "master:3"}, FSType: "fuse.lockfs", Source: "lock\tfs", Super: "rw"}, got[2])
	assert.Equal(t, "", got[3].Super, "a line without super options")
	assert.Nil(t, got[1].Optional, "no optional fields")

	assert.True(t, got[1].IsLockfs())
	assert.False(t, got[0].IsLockfs())
	at := At(got, "/tmp/lt/m")
	require.Len(t, at, 2)
	assert.Equal(t, []int{43, 45}, []int{at[0].ID, at[1].ID}, "bottom first")
	assert.Len(t, Under(got, "/tmp"), 3)
	assert.Len(t, Under(got, "/tmp/lt"), 2)
	assert.Empty(t, Under(got, "/tmp/l"), "a prefix that is not a directory")
	assert.Len(t, Under(got, "/"), 4)
	assert.Len(t, Lockfs(got), 3)
}

func TestParseMalformed(t *testing.T) {
	for _, line := range []string{
		"garbage line",
		"22 1 8:1 / / rw shared:1 ext4 /dev/sda1 rw", // no separator
		"22 1 8:1 / / - ext4 /dev/sda1 rw",           // too few fields before it
		"22 1 8:1 / / rw -",                          // nothing after it
		"22 1 8:1 / / rw - ext4",                     // no source
		"x 1 8:1 / / rw - ext4 /dev/sda1 rw",         // ID
		"22 y 8:1 / / rw - ext4 /dev/sda1 rw",        // parent ID
		"-",
		`\`,
	} {
		_, err := Parse([]byte("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n" + line + "\n"))
		require.Error(t, err, "%q", line)
		assert.Contains(t, err.Error(), "line 2", "%q", line)
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		"/plain":          "/plain",
		`/a\040b`:         "/a b",
		`/a\011b\012c`:    "/a\tb\nc",
		`/back\134slash`:  `/back\slash`,
		`/end\040`:        "/end ",
		`a\0`:             `a\0`,   // too short: kept
		`a\09x`:           `a\09x`, // not octal: kept
		`\`:               `\`,
		`\400`:            `\400`, // more than a byte: kept
		`\101\102\103xyz`: "ABCxyz",
	} {
		assert.Equal(t, want, Unescape(in), "%q", in)
	}
}

func TestLockfsTypeMatchesFsnode(t *testing.T) {
	assert.Equal(t, fsnode.FSType, LockfsType)
}

func TestReadSelf(t *testing.T) {
	ms, err := Read()
	require.NoError(t, err)
	require.NotEmpty(t, ms)
	root := false
	for _, m := range ms {
		root = root || m.Point == "/"
	}
	assert.True(t, root, "/ is mounted")
	ok, err := IsMounted("/")
	require.NoError(t, err)
	assert.True(t, ok)
	dir := t.TempDir()
	ok, err = IsMounted(dir)
	require.NoError(t, err)
	assert.False(t, ok, "%s", dir)
	lfs, err := LockfsAt(dir)
	require.NoError(t, err)
	assert.Empty(t, lfs)

	_, err = ReadFile(dir + "/missing")
	require.ErrorIs(t, err, os.ErrNotExist)
	assert.True(t, strings.Contains(err.Error(), "mount table"))
}
