package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// TestReadyzStandby checks /readyz by state: only a streaming engine is
// ready, unless ?standby=ok also admits a standby (and nothing else).
func TestReadyzStandby(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		state    string
		failed   bool
		path     string
		wantCode int
		wantBody string
	}{
		{replication.StateStreaming, false, "/readyz", 200, "ready: streaming"},
		{replication.StateStreaming, false, "/readyz?standby=ok", 200, "ready: streaming"},
		{replication.StateStandby, false, "/readyz", 503, "not ready: state standby"},
		{replication.StateStandby, false, "/readyz?standby=ok", 200, "ready: standby"},
		{replication.StateStandby, false, "/readyz?standby=yes", 503, "not ready: state standby"},
		{replication.StateConnecting, false, "/readyz?standby=ok", 503, "not ready: state connecting"},
		{replication.StateBackingOff, false, "/readyz?standby=ok", 503, "not ready: state backing_off"},
		{replication.StateStandby, true, "/readyz?standby=ok", 503, "not ready: state failed"},
	} {
		m := New("test", time.Minute)
		m.State(tc.state)
		if tc.failed {
			m.SetFailed()
		}
		rec := httptest.NewRecorder()
		m.Handler(false).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		body, _ := io.ReadAll(rec.Result().Body)
		if rec.Code != tc.wantCode || !strings.HasPrefix(string(body), tc.wantBody) {
			t.Errorf("state %s (failed %v) GET %s = %d %q, want %d %q",
				tc.state, tc.failed, tc.path, rec.Code, body, tc.wantCode, tc.wantBody)
		}
	}
}
