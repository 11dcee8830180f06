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
