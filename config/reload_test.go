package config

import (
	"slices"
	"testing"
)

func TestRestartSections(t *testing.T) {
	t.Parallel()
	const base = "postgres:\n  dsn: postgres://u@h/db\nredis:\n  addr: h:6379\nrules:\n  - table: users\n    keys: [\"user:{id}\"]\n"
	load := func(text string, env map[string]string) *Config {
		t.Helper()
		cfg, err := Parse("c.yaml", []byte(text), mapEnv(env))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	running := load(base, nil)
	tests := []struct {
		name string
		text string
		env  map[string]string
		want []string
	}{
		{"same", base, nil, nil},
		{"rules only", base + "  - table: orders\n    keys: [\"order:{id}\"]\n", nil, nil},
		{"defaults spelt out", base + "sink:\n  delete_command: unlink\n  max_batch_keys: 10000\n", nil, nil},
		{"sink and log", base + "sink:\n  max_batch_keys: 5\nlog:\n  level: debug\n", nil, []string{"sink", "log"}},
		{"streaming off", "postgres:\n  dsn: postgres://u@h/db\n  streaming: false\nredis:\n  addr: h:6379\nrules:\n  - table: users\n    keys: [\"user:{id}\"]\n", nil, []string{"postgres"}},
		{"env override", base, map[string]string{"CDC_REDIS_DB": "3"}, []string{"redis"}},
		{"consistency", base + "consistency:\n  on_first_start: keep\n", nil, []string{"consistency"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := RestartSections(running, load(tc.text, tc.env)); !slices.Equal(got, tc.want) {
				t.Errorf("RestartSections = %q, want %q", got, tc.want)
			}
		})
	}
}
