package cacheaside

import (
	"context"
	"encoding/json"
	"fmt"

	"go.uber.org/zap"
)

// GetJSON is Get for values stored as JSON: load returns a T, which is
// cached as its JSON encoding, and cached entries are decoded into a T.
//
// A cached entry that does not decode into T (written by other code or by
// an older version of T) is deleted with its lease, counted in
// Stats.DecodeErrors, and the value is loaded (and not cached by this call).
// To cache "not found", return a T that says so (a nil pointer, say, cached
// as null): the engine deletes the key when the row appears, as it does
// when the row changes.
func GetJSON[T any](ctx context.Context, c *Client, key string, load func(ctx context.Context) (T, error)) (T, error) {
	var (
		loaded T
		ran    bool // our own loader ran: no need to decode what it encoded
	)
	data, err := c.Get(ctx, key, func(ctx context.Context) ([]byte, error) {
		v, err := load(ctx)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("encode as JSON: %w", err)
		}
		loaded, ran = v, true
		return b, nil
	})
	var zero T
	if err != nil {
		return zero, err
	}
	if ran {
		return loaded, nil
	}
	var v T
	derr := json.Unmarshal(data, &v)
	if derr == nil {
		return v, nil
	}
	c.Stats.DecodeErrors.Add(1)
	c.log.Warn("cached entry does not decode; deleted, and the value loaded", zap.String("key", c.opt.Prefix+key), zap.Error(derr))
	_ = c.Delete(ctx, key) // a failure is counted in RedisErrors; the entry then lives until its TTL
	c.Stats.Loads.Add(1)
	v, err = load(ctx)
	if err != nil {
		c.Stats.LoadErrors.Add(1)
		return zero, fmt.Errorf("cacheaside: load %q: %w", c.opt.Prefix+key, err)
	}
	return v, nil
}
