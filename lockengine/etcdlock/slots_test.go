package etcdlock

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSlotsSmallestFree(t *testing.T) {
	var s slots
	require.Equal(t, uint32(0), s.get("a"))
	require.Equal(t, uint32(1), s.get("a"))
	require.Equal(t, uint32(0), s.get("b"), "names are independent")
	require.Equal(t, uint32(2), s.get("a"))
	s.put("a", 1)
	require.Equal(t, uint32(1), s.get("a"), "a freed slot is reused first")
	for _, n := range []uint32{0, 1, 2} {
		s.put("a", n)
	}
	s.put("b", 0)
	require.Empty(t, s.used, "idle names leave nothing behind")
}
