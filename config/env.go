package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// applyEnv overrides scalar options from CDC_<SECTION>_<OPTION> variables,
// e.g. CDC_POSTGRES_DSN, CDC_REDIS_ADDR, CDC_REDIS_PASSWORD, CDC_LOG_LEVEL.
func applyEnv(c *Config, env func(string) (string, bool)) []Problem {
	var ps []Problem
	v := reflect.ValueOf(c).Elem()
	for i := 0; i < v.NumField(); i++ {
		sec := v.Field(i)
		if sec.Kind() != reflect.Struct {
			continue
		}
		secName := yamlName(v.Type().Field(i))
		for j := 0; j < sec.NumField(); j++ {
			f := sec.Type().Field(j)
			name := "CDC_" + strings.ToUpper(secName+"_"+yamlName(f))
			val, ok := env(name)
			if !ok {
				continue
			}
			if err := setScalar(sec.Field(j), val); err != nil {
				ps = append(ps, Problem{Where: "env " + name, Msg: err.Error()})
			}
		}
	}
	return ps
}

// EnvNames lists every environment variable applyEnv reads.
func EnvNames() []string {
	var names []string
	t := reflect.TypeOf(Config{})
	for i := 0; i < t.NumField(); i++ {
		if t.Field(i).Type.Kind() != reflect.Struct {
			continue
		}
		sec := t.Field(i).Type
		for j := 0; j < sec.NumField(); j++ {
			names = append(names, "CDC_"+strings.ToUpper(yamlName(t.Field(i))+"_"+yamlName(sec.Field(j))))
		}
	}
	sort.Strings(names)
	return names
}

func yamlName(f reflect.StructField) string {
	n, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return n
}

func setScalar(f reflect.Value, s string) error {
	if f.Kind() == reflect.Pointer {
		nv := reflect.New(f.Type().Elem())
		if err := setScalar(nv.Elem(), s); err != nil {
			return err
		}
		f.Set(nv)
		return nil
	}
	switch {
	case f.Type() == reflect.TypeOf(time.Duration(0)):
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 10s", s)
		}
		f.SetInt(int64(d))
	case f.Kind() == reflect.String:
		f.SetString(s)
	case f.Kind() == reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
		f.SetInt(int64(n))
	case f.Kind() == reflect.Slice:
		// A comma-separated list, e.g. CDC_VERIFY_WINDOWS=1s,60s.
		parts := strings.Split(s, ",")
		out := reflect.MakeSlice(f.Type(), len(parts), len(parts))
		for i, p := range parts {
			if err := setScalar(out.Index(i), strings.TrimSpace(p)); err != nil {
				return fmt.Errorf("item %d: %w", i+1, err)
			}
		}
		f.Set(out)
	case f.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		f.SetBool(b)
	default:
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}
