//go:build linux

package replication

import "syscall"

// newChunk returns an empty chunk of capacity c for a txnBuffer. Full-size
// chunks are mapped outside the Go heap: the buffer's bytes are charged to
// txn_buffer_mb already, and on the heap they would also raise the garbage
// collector's target (twice the live heap), letting garbage grow by as much
// again before a collection.
func newChunk(c int) []byte {
	if c < maxChunk {
		return make([]byte, 0, c)
	}
	b, err := syscall.Mmap(-1, 0, c, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]byte, 0, c)
	}
	return b[:0]
}

// freeChunk gives a chunk from newChunk back; nothing may refer to it
// after. A chunk that was not mapped is left to the garbage collector
// (syscall.Munmap refuses a slice it did not map).
func freeChunk(b []byte) {
	if cap(b) >= maxChunk {
		_ = syscall.Munmap(b[:cap(b)])
	}
}
