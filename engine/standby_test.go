package engine

import (
	"strings"
	"testing"
)

func TestStandbyProblems(t *testing.T) {
	for _, tc := range []struct {
		name       string
		version    int
		inRecovery bool
		failover   bool
		want       []string // one substring per expected problem
	}{
		{name: "primary 14", version: 140023},
		{name: "primary 17 with failover slot", version: 170010, failover: true},
		{name: "standby 16", version: 160014, inRecovery: true},
		{name: "standby 18", version: 180004, inRecovery: true},
		{name: "standby 15", version: 150018, inRecovery: true, want: []string{"needs PostgreSQL 16 or later"}},
		{name: "standby 14", version: 140023, inRecovery: true, want: []string{"of PostgreSQL 14.23"}},
		{name: "standby 17 with failover slot", version: 170010, inRecovery: true, failover: true, want: []string{"cannot be a failover slot"}},
		{name: "standby 15 with failover slot", version: 150018, inRecovery: true, failover: true, want: []string{"16 or later", "failover_slot: false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := standbyProblems(tc.version, tc.inRecovery, tc.failover)
			if len(got) != len(tc.want) {
				t.Fatalf("problems %q, want %d", got, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) || !strings.Contains(got[i], "target_session_attrs=read-write") {
					t.Errorf("problem %q lacks %q or the multi-host hint", got[i], w)
				}
			}
		})
	}
}

func TestStandbySettingsAdvice(t *testing.T) {
	for _, tc := range []struct {
		feedback    bool
		primarySlot string
		want        string
	}{
		{feedback: true, primarySlot: "standby1"},
		{feedback: false, primarySlot: "standby1", want: "hot_standby_feedback is off"},
		{feedback: false, primarySlot: "", want: "hot_standby_feedback is off"},
		{feedback: true, primarySlot: "", want: "primary_slot_name is empty"},
	} {
		got := standbySettingsAdvice(tc.feedback, tc.primarySlot)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("feedback=%v primary_slot_name=%q: advice %q, want %q", tc.feedback, tc.primarySlot, got, tc.want)
		}
		if got != "" && !strings.Contains(got, "rows_removed") {
			t.Errorf("advice %q does not name the consequence (rows_removed)", got)
		}
	}
}
