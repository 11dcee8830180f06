package replication

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// Retrying cannot fix a refused login, a missing database, slot or
// publication, missing privileges, or WAL the server already removed; a
// lost connection, a restarting server or a slot held by another process
// are waited out.
func TestClassify(t *testing.T) {
	t.Parallel()
	pg := func(code, msg string) error {
		return fmt.Errorf("start replication: %w", &pgconn.PgError{Code: code, Message: msg})
	}
	for _, tc := range []struct {
		err error
		fix string // "" = transient
	}{
		{pg("28P01", "password authentication failed for user \"app\""), "refused the login"},
		{pg("28000", "no pg_hba.conf entry for replication connection"), "pg_hba.conf"},
		{pg("3D000", "database \"nope\" does not exist"), "database name"},
		{pg("42704", "replication slot \"x\" does not exist"), "slot"},
		{pg("42501", "permission denied to start WAL sender"), "REPLICATION"},
		{pg("55000", "logical decoding requires wal_level >= logical"), "wal_level"},
		{pg("58P01", "requested WAL segment 000000010000000000000003 has already been removed"), "pg_drop_replication_slot"},
		{pg("55006", "replication slot \"x\" is active for PID 42"), ""},
		{pg("57P01", "terminating connection due to administrator command"), ""},
		{pg("57P03", "the database system is starting up"), ""},
		{pg("53300", "sorry, too many clients already"), ""},
		{io.ErrUnexpectedEOF, ""},
		{errors.New("dial tcp 127.0.0.1:5432: connect: connection refused"), ""},
	} {
		got := Classify(tc.err)
		if (got != nil) != (tc.fix != "") {
			t.Errorf("Classify(%v) = %v, want permanent %v", tc.err, got, tc.fix != "")
			continue
		}
		if got == nil {
			if IsPermanent(tc.err) {
				t.Errorf("IsPermanent(%v) = true", tc.err)
			}
			continue
		}
		var pe *PermanentError
		if !errors.As(got, &pe) || !strings.Contains(got.Error(), tc.fix) || !errors.Is(got, tc.err) {
			t.Errorf("Classify(%v) = %v: want a PermanentError wrapping it that names %q", tc.err, got, tc.fix)
		}
		if !IsPermanent(tc.err) {
			t.Errorf("IsPermanent(%v) = false", tc.err)
		}
	}
}
