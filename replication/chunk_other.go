//go:build !linux

package replication

// newChunk returns an empty chunk of capacity c for a txnBuffer (on the Go
// heap; on Linux full-size chunks are mapped outside it).
func newChunk(c int) []byte { return make([]byte, 0, c) }

// freeChunk gives a chunk from newChunk back.
func freeChunk([]byte) {}
