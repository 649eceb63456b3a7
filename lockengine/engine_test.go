package lockengine

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestSplitJoinName: SplitName gives the parent directory's path ("" for
// a top-level name, the root) and the last component; JoinName is its
// inverse.
func TestSplitJoinName(t *testing.T) {
	for _, c := range []struct{ name, dir, base string }{
		{"deploy", "", "deploy"},
		{"team/deploy", "team", "deploy"},
		{"team/app/deploy", "team/app", "deploy"},
		{"a/b/c/d", "a/b/c", "d"},
	} {
		dir, base := SplitName(c.name)
		assert.Equal(t, c.dir, dir, "dir of %q", c.name)
		assert.Equal(t, c.base, base, "base of %q", c.name)
		assert.Equal(t, c.name, JoinName(c.dir, c.base), "JoinName(%q, %q)", c.dir, c.base)
	}
}
