// Package wbtest holds the schema and mappings that the write-behind tests
// and their helper binary (internal/wbflusher) share.
package wbtest

import "github.com/cdcinvalidate/cdcinvalidate/writebehind"

// Schema creates the tables of Mappings.
const Schema = `
CREATE TABLE IF NOT EXISTS counters (id bigint PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS post_stats (id bigint PRIMARY KEY, views bigint, likes integer, title text);
CREATE TABLE IF NOT EXISTS scores (board text NOT NULL, player text NOT NULL, score bigint, PRIMARY KEY (board, player));
`

// Mappings returns the tests' mappings (a fresh slice each call).
func Mappings() []writebehind.Mapping {
	return []writebehind.Mapping{
		{Key: "counter:{id}", Table: "counters", Column: "n", Mode: writebehind.Add},
		{Key: "post:{id}:views", Table: "post_stats", Column: "views", Mode: writebehind.Add},
		{Key: "post:{id}:likes", Table: "post_stats", Column: "likes", Mode: writebehind.Add},
		{Key: "post:{id}:title", Table: "post_stats", Column: "title", Mode: writebehind.Set},
		{Key: "score:{board}:{player}", Table: "scores", Column: "score", Mode: writebehind.Add},
	}
}
