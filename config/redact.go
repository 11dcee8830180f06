package config

import "regexp"

// userinfoRE matches the password of a URL up to the last '@' before the
// path, as url.Parse (and so pgconn) reads it: "postgres://u:p@ss@h/db" has
// the password "p@ss".
var userinfoRE = regexp.MustCompile(`(://[^:/@\s]*:)[^/\s]*@`)

// passwordKVRE matches a keyword/value password: quoted, or unquoted where a
// backslash escapes the next character (libpq reads password=se\ cret as
// "se cret").
var passwordKVRE = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|(?:\\.|[^\s\\])+\\?)`)

// Redact removes passwords from connection strings and messages that may
// quote them.
func Redact(s string) string {
	s = userinfoRE.ReplaceAllString(s, "${1}xxxxx@")
	return passwordKVRE.ReplaceAllString(s, "${1}xxxxx")
}

// RedactAll is Redact of each of ss, in a new slice (for a list of
// problems that may quote a DSN).
func RedactAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = Redact(s)
	}
	return out
}
