package main

import "testing"

func TestMaxProcs(t *testing.T) {
	for _, c := range []struct {
		env         string
		chose, want int
	}{
		{"", 2, 1}, // two CPUs: one P, the other CPU left to the walsender and Redis
		{"", 1, 1}, // one CPU: nothing to change
		{"", 4, 4}, // more CPUs: the stream and the sink keep one each
		{"", 3, 3},
		{"2", 2, 2}, // GOMAXPROCS set: the operator's choice stands
		{"8", 8, 8},
	} {
		if got := maxProcs(c.env, c.chose); got != c.want {
			t.Errorf("maxProcs(GOMAXPROCS=%q, runtime chose %d) = %d, want %d", c.env, c.chose, got, c.want)
		}
	}
}
