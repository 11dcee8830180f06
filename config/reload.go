package config

import "reflect"

// RestartSections names the sections other than rules whose values differ
// between a running configuration and a reloaded one, in file order. A
// reload applies only the rules; these take effect at the next start.
func RestartSections(running, reloaded *Config) []string {
	var out []string
	a, b := reflect.ValueOf(running).Elem(), reflect.ValueOf(reloaded).Elem()
	for i := 0; i < a.NumField(); i++ {
		name := yamlName(a.Type().Field(i))
		if name == "rules" || !a.Type().Field(i).IsExported() {
			continue
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			out = append(out, name)
		}
	}
	return out
}
