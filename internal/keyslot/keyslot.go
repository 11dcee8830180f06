// Package keyslot computes Redis Cluster hash slots and names keys that
// must share a slot with another key (see the Redis Cluster specification,
// "Hash tags": https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags).
//
// Redis hashes a key with CRC16 (XMODEM) modulo 16384. When the key holds
// a '{', and a '}' follows it with at least one byte between, only the
// bytes between the first '{' and the first '}' after it are hashed (the
// hash tag); otherwise the whole key is. So "user:{42}:orders" lives in
// the slot of "42", while "{}x", "a}b" and "a{b" (an empty tag, a lone
// '}', an unclosed '{') are hashed whole.
package keyslot

import "sync"

// Slots is the number of hash slots of a Redis Cluster.
const Slots = 16384

// Slot returns the hash slot Redis Cluster assigns to key.
func Slot(key string) int { return int(crc16(HashPart(key))) % Slots }

// HashPart returns the bytes of key that Redis hashes: the content of its
// hash tag, or the whole key when it has none.
func HashPart(key string) string {
	for i := 0; i < len(key); i++ {
		if key[i] != '{' {
			continue
		}
		for j := i + 1; j < len(key); j++ {
			if key[j] == '}' {
				if j == i+1 {
					return key // an empty tag: the whole key
				}
				return key[i+1 : j]
			}
		}
		return key // no '}' after the first '{'
	}
	return key
}

// Tag returns a non-empty string without '}' that, put between braces as
// the first hash tag of another key ("lease:{" + Tag(k) + "}..."), places
// that key in the slot of key. It is the hashed part of key when that has
// neither '}' nor is empty (keys without braces, keys with a hash tag,
// keys with an unclosed '{'), and otherwise (an empty tag "{}", a '}'
// before any '{', the empty key) a short string of [0-9a-z] that hashes to
// the same slot.
func Tag(key string) string {
	h := HashPart(key)
	if h != "" && !hasCloseBrace(h) {
		return h
	}
	return slotTag(Slot(key))
}

func hasCloseBrace(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '}' {
			return true
		}
	}
	return false
}

var (
	slotTagsOnce sync.Once
	slotTags     *[Slots]string
)

// SlotTag returns a short string of [0-9a-z] that hashes to slot, for
// naming a key that must live in that slot: "name:{" + SlotTag(s) + "}".
func SlotTag(slot int) string { return slotTag(slot) }

// slotTag returns the shortest string of [0-9a-z] (first in length, then
// alphabetical order) that hashes to slot.
func slotTag(slot int) string {
	slotTagsOnce.Do(func() { slotTags = buildSlotTags() })
	return slotTags[slot]
}

// buildSlotTags finds, for every slot, a string of up to 4 characters of
// [0-9a-z] that hashes to it (36^4 candidates cover every slot; a test
// checks it).
func buildSlotTags() *[Slots]string {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
	var tags [Slots]string
	left := Slots
	buf := make([]byte, 0, 4)
	var walk func(depth int) bool
	walk = func(depth int) bool {
		if len(buf) == depth {
			s := int(crc16(string(buf))) % Slots
			if tags[s] == "" {
				tags[s] = string(buf)
				left--
			}
			return left == 0
		}
		for i := 0; i < len(alphabet); i++ {
			buf = append(buf, alphabet[i])
			done := walk(depth)
			buf = buf[:len(buf)-1]
			if done {
				return true
			}
		}
		return false
	}
	for depth := 1; depth <= 4 && left > 0; depth++ {
		walk(depth)
	}
	return &tags
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial value 0), the
// checksum Redis Cluster hashes keys with.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc = crc<<8 ^ crcTable[byte(crc>>8)^s[i]]
	}
	return crc
}

var crcTable = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

// GroupBySlot returns the indexes of keys grouped by slot, each group in
// the keys' order, the groups in the order their first key appears.
// key(i) returns the i-th of n keys.
func GroupBySlot(n int, key func(i int) string) [][]int {
	var groups [][]int
	at := map[int]int{}
	for i := 0; i < n; i++ {
		s := Slot(key(i))
		g, ok := at[s]
		if !ok {
			g = len(groups)
			at[s] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], i)
	}
	return groups
}
