package bench

import (
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseRates(t *testing.T) {
	tests := []struct {
		in      string
		want    Rates
		wantErr string
	}{
		{in: "500,2000,max", want: Rates{{PerSecond: 500}, {PerSecond: 2000}, {Max: true}}},
		{in: " 200 ", want: Rates{{PerSecond: 200}}},
		{in: "MAX", want: Rates{{Max: true}}},
		{in: "2.5,100/s", want: Rates{{PerSecond: 2.5}, {PerSecond: 100}}},
		{in: "", wantErr: "empty entry"},
		{in: "500,,max", wantErr: "empty entry"},
		{in: "0", wantErr: `"0" is not a positive number`},
		{in: "-5", wantErr: "not a positive number"},
		{in: "fast", wantErr: `"fast" is not a positive number`},
		{in: "NaN", wantErr: "not a positive number"},
		{in: "Inf", wantErr: "not a positive number"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRates(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRates(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseRates(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
	rs, _ := ParseRates("500,2000,max")
	if s := rs.String(); s != "500,2000,max" {
		t.Errorf("String() = %q", s)
	}
}

func parseFlags(t *testing.T, args ...string) (Options, error) {
	t.Helper()
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var o Options
	o.RegisterFlags(fs)
	err := fs.Parse(args)
	return o, err
}

func TestFlags(t *testing.T) {
	o, err := parseFlags(t)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(o, DefaultOptions()) {
		t.Errorf("defaults from flags = %+v, want %+v", o, DefaultOptions())
	}
	if o.Rows != 200_000 || o.Repeat != 3 || o.Duration != 10*time.Second || o.BigRows != 2_000_000 || o.Rates.String() != "500,2000,max" {
		t.Errorf("defaults differ from the issue: %+v", o)
	}
	o, err = parseFlags(t, "--rows", "2000", "--repeat", "1", "--rates", "200", "--duration", "1s", "--big-rows", "20000", "--phases", "memory,catchup,memory", "--json")
	if err != nil {
		t.Fatal(err)
	}
	if o.Rows != 2000 || o.Repeat != 1 || o.Rates.String() != "200" || o.Duration != time.Second || o.BigRows != 20000 || !o.JSON {
		t.Errorf("parsed = %+v", o)
	}
	if !reflect.DeepEqual(o.Phases, []string{"memory", "catchup"}) {
		t.Errorf("phases = %q", o.Phases)
	}
	if _, err := parseFlags(t, "--phases", "catchup,speed"); err == nil || !strings.Contains(err.Error(), `unknown phase "speed"`) {
		t.Errorf("bad phase: %v", err)
	}
	if _, err := parseFlags(t, "--rates", "x"); err == nil {
		t.Error("bad rate accepted")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Options)
		want   string // "" = valid
	}{
		{"defaults", func(*Options) {}, ""},
		{"both servers", func(o *Options) { o.PostgresDSN, o.RedisAddr = "postgres://x/db", "127.0.0.1:6379" }, ""},
		{"dsn without redis", func(o *Options) { o.PostgresDSN = "postgres://x/db" }, "go together"},
		{"redis without dsn", func(o *Options) { o.RedisAddr = "127.0.0.1:6379" }, "go together"},
		{"rows", func(o *Options) { o.Rows = 0 }, "--rows 0"},
		{"batch", func(o *Options) { o.Batch = 0 }, "--batch 0"},
		{"repeat", func(o *Options) { o.Repeat = 0 }, "--repeat 0"},
		{"no rates", func(o *Options) { o.Rates = nil }, "--rates"},
		{"no rates without latency", func(o *Options) { o.Rates, o.Phases = nil, []string{PhaseCatchUp} }, ""},
		{"duration", func(o *Options) { o.Duration = 0 }, "--duration"},
		{"big rows", func(o *Options) { o.BigRows = -1 }, "--big-rows -1"},
		{"max conns", func(o *Options) { o.MaxConns = 0 }, "--max-conns"},
		{"no phases", func(o *Options) { o.Phases = nil }, "--phases"},
		{"redis db", func(o *Options) { o.RedisDB = -1 }, "--redis-db"},
		{"engine", func(o *Options) { o.Engine = "/nonexistent/cdcinvalidate" }, "--engine"},
		{"engine found", func(o *Options) { o.Engine = "/bin/sh" }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := DefaultOptions()
			tt.change(&o)
			err := o.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	o := DefaultOptions()
	o.Rows, o.Repeat = 0, 0
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--rows") || !strings.Contains(err.Error(), "--repeat") {
		t.Errorf("not every problem reported: %v", err)
	}
}
