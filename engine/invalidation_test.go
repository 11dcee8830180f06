package engine

import (
	"strings"
	"testing"
)

func TestSlotInvalidation(t *testing.T) {
	for _, tc := range []struct {
		name        string
		walStatus   string
		reason      string
		conflicting bool
		lost        bool
		mentions    string
	}{
		{name: "healthy", walStatus: "reserved"},
		{name: "healthy, extended", walStatus: "extended"},
		{name: "unreserved is not lost yet", walStatus: "unreserved"},
		{name: "no wal_status (physical or pre-13)", walStatus: ""},
		{name: "PG13-16 wal removed", walStatus: "lost", mentions: "max_slot_wal_keep_size", lost: true},
		{name: "PG17 wal_removed", walStatus: "lost", reason: "wal_removed", mentions: "max_slot_wal_keep_size", lost: true},
		{name: "PG18 idle_timeout", walStatus: "lost", reason: "idle_timeout", mentions: "idle_replication_slot_timeout", lost: true},
		{name: "PG17 rows_removed on a standby", walStatus: "lost", reason: "rows_removed", conflicting: true, mentions: "hot_standby_feedback", lost: true},
		{name: "PG17 wal_level_insufficient", walStatus: "lost", reason: "wal_level_insufficient", conflicting: true, mentions: "wal_level", lost: true},
		{name: "PG16 conflict, reason unknown", walStatus: "lost", conflicting: true, mentions: "conflicted with recovery", lost: true},
		{name: "PG16 wal removed also reads conflicting", walStatus: "lost", conflicting: true, mentions: "max_slot_wal_keep_size", lost: true},
		{name: "PG16 conflict while wal_status still reads reserved", walStatus: "reserved", conflicting: true, mentions: "conflicted with recovery", lost: true},
		{name: "a reason from a future version", walStatus: "lost", reason: "something_new", mentions: "invalidation_reason = something_new", lost: true},
		{name: "a future reason with wal_status not lost", walStatus: "reserved", reason: "something_new", mentions: "something_new", lost: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lost, why := slotInvalidation(tc.walStatus, tc.reason, tc.conflicting)
			if lost != tc.lost {
				t.Fatalf("lost = %v (%q), want %v", lost, why, tc.lost)
			}
			if !lost && why != "" {
				t.Fatalf("a healthy slot has a reason: %q", why)
			}
			if !strings.Contains(why, tc.mentions) {
				t.Fatalf("why = %q, want it to mention %q", why, tc.mentions)
			}
		})
	}
}
