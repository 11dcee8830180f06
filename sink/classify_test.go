package sink

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// redisErr is an error reply as go-redis returns it (redis.Error).
type redisErr string

func (e redisErr) Error() string { return string(e) }
func (redisErr) RedisError()     {}

// Retrying cannot fix permission, authentication, type and command errors;
// a loading, read-only, out-of-memory or busy server and a broken
// connection are waited out.
func TestClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err       error
		permanent bool
		fix       string
	}{
		{redisErr("NOPERM this user has no permissions to access one of the keys used as arguments"), true, "~cdcinvalidate:*"},
		{redisErr("NOPERM this user has no permissions to run the 'unlink' command"), true, "+unlink"},
		{redisErr("WRONGPASS invalid username-password pair or user is disabled."), true, "redis.password"},
		{redisErr("NOAUTH Authentication required."), true, "redis.password"},
		{redisErr("WRONGTYPE Operation against a key holding the wrong kind of value"), true, "WRONGTYPE"},
		{redisErr("ERR unknown command 'UNLINK', with args beginning with: "), true, "delete_command: del"},
		{redisErr("ERR value is not an integer or out of range"), true, "generation_key"},
		{redisErr("ERR The user executing the script can't run this command or subcommand script: be46ca, on @user_script:2."), true, "+unlink"},
		{redisErr("CROSSSLOT Keys in request don't hash to the same slot"), true, "Redis Cluster"},
		{redisErr("MOVED 3999 127.0.0.1:6381"), true, "Redis Cluster"},
		{redisErr("ASK 3999 127.0.0.1:6381"), true, "Redis Cluster"},
		{redisErr("ERR user_script:3: Script attempted to access nonexistent global variable 'x' script: 4b0c1f, on @user_script:3."), true, "script"},
		{redisErr("ERR Error running script (call to f_4b0c1f): @user_script:3: user_script:3: attempt to compare nil with number"), true, "script"},
		{redisErr("ERR increment or decrement would overflow"), true, "generation"},
		{redisErr("ERR Protocol error: invalid bulk length"), true, "proto-max-bulk-len"},
		{redisErr("ERR string exceeds maximum allowed size (proto-max-bulk-len)"), true, "proto-max-bulk-len"},
		{redisErr("LOADING Redis is loading the dataset in memory"), false, ""},
		{redisErr("NOSCRIPT No matching script. Please use EVAL."), false, ""},
		{redisErr("TRYAGAIN Multiple keys request during rehashing of slot"), false, ""},
		{redisErr("READONLY You can't write against a read only replica."), false, ""},
		{redisErr("OOM command not allowed when used memory > 'maxmemory'."), false, ""},
		{redisErr("BUSY Redis is busy running a script."), false, ""},
		{redisErr("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."), false, ""},
		{redisErr("ERR max number of clients reached"), false, ""},
		{io.EOF, false, ""},
		{errors.New("dial tcp 127.0.0.1:6379: connect: connection refused"), false, ""},
	} {
		got := Classify(tc.err)
		if (got != nil) != tc.permanent {
			t.Errorf("Classify(%q) = %v, want permanent %v", tc.err, got, tc.permanent)
			continue
		}
		var pe *PermanentError
		if got != nil && (!errors.As(got, &pe) || !strings.Contains(got.Error(), tc.fix) || !errors.Is(got, tc.err)) {
			t.Errorf("Classify(%q) = %v: want a PermanentError wrapping it that names %q", tc.err, got, tc.fix)
		}
	}
}
