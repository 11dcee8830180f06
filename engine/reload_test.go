package engine

import (
	"slices"
	"strings"
	"testing"

	"github.com/cdcinvalidate/cdcinvalidate/mapping"
)

func TestMissingFromPublication(t *testing.T) {
	t.Parallel()
	infos := map[string]mapping.TableInfo{
		"public.users":    {Exists: true, Kind: 'r'},
		"public.accounts": {Exists: true, Kind: 'r'},
		"public.parted":   {Exists: true, Kind: 'p'},
		"public.parted_a": {Exists: true, Kind: 'r', PartitionOf: "public.parted"},
		"public.nosuch":   {},
	}
	all := []string{"public.accounts", "public.nosuch", "public.parted", "public.parted_a", "public.users"}
	tests := []struct {
		name string
		p    publication
		want []string
	}{
		{"via root", publication{Exists: true, ViaRoot: true, Tables: map[string]bool{"public.users": true}}, []string{"public.accounts", "public.parted"}},
		// Without publish_via_partition_root the partitioned table is a
		// problem of its own (publicationProblems), not something to add.
		{"not via root", publication{Exists: true, Tables: map[string]bool{"public.users": true}}, []string{"public.accounts", "public.parted_a"}},
		{"all in", publication{Exists: true, ViaRoot: true, Tables: map[string]bool{"public.users": true, "public.accounts": true, "public.parted": true}}, nil},
	}
	for _, tc := range tests {
		if got := missingFromPublication(tc.p, all, infos); !slices.Equal(got, tc.want) {
			t.Errorf("%s: missing %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestPublicationStatements(t *testing.T) {
	t.Parallel()
	if got, want := alterPublicationSQL("cdc", []string{"public.accounts", `crm.Odd "name"`}), `ALTER PUBLICATION "cdc" ADD TABLE "public"."accounts", "crm"."Odd ""name"""`; got != want {
		t.Errorf("alterPublicationSQL = %s, want %s", got, want)
	}
	if got, want := markPublicationSQL("cdc"), `COMMENT ON PUBLICATION "cdc" IS 'managed by cdcinvalidate'`; got != want {
		t.Errorf("markPublicationSQL = %s, want %s", got, want)
	}
	one := (&ReloadError{[]string{"a"}}).Error()
	two := (&ReloadError{[]string{"a", "b"}}).Error()
	if one != "rules not reloaded: a" || !strings.HasPrefix(two, "rules not reloaded, 2 problems:") {
		t.Errorf("ReloadError texts %q and %q", one, two)
	}
}
