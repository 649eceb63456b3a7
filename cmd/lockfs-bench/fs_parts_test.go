package main

import (
	"maps"
	"slices"
	"testing"
)

func TestParseParts(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"tree", []string{"tree"}},
		{"1, tree ,cross", []string{"1", "cross", "tree"}},
		{"trace,1,2,3,4,calls", []string{"1", "2", "3", "4", "calls", "trace"}},
	} {
		got, err := parseParts(tc.in)
		if err != nil {
			t.Errorf("parseParts(%q): %v", tc.in, err)
			continue
		}
		if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, tc.want) {
			t.Errorf("parseParts(%q) = %v, want %v", tc.in, keys, tc.want)
		}
	}
	for _, in := range []string{"tre", "1,trees", "", " , "} {
		if got, err := parseParts(in); err == nil {
			t.Errorf("parseParts(%q) = %v, want an error", in, got)
		}
	}
}

// The default -parts must stay valid and leave out the parts that are only
// run on request.
func TestDefaultParts(t *testing.T) {
	got, err := parseParts("trace,1,2,3,4,calls")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"cross", "tree"} {
		if got[p] {
			t.Errorf("default parts include %q", p)
		}
	}
}
