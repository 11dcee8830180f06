package cacheaside_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"net/http"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
)

// The typical use: one Client per process, next to the redis client, and
// Get wherever the application read through its cache by hand. The engine
// runs with the rule "users -> user:{id}" and client.leases: true.
func Example() {
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	defer rdb.Close()
	cache, err := cacheaside.New(rdb, cacheaside.Options{
		TTL:      10 * time.Minute, // the safety net for writes the engine cannot see
		LeaseTTL: 5 * time.Second,  // longer than any normal load
		MaxWait:  time.Second,      // how long readers wait for another's load
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()

	var db *sql.DB // the primary, not a replica
	ctx := context.Background()
	id := 42
	name, err := cache.Get(ctx, "user:"+strconv.Itoa(id), func(ctx context.Context) ([]byte, error) {
		var name string
		err := db.QueryRowContext(ctx, `SELECT name FROM users WHERE id = $1`, id).Scan(&name)
		return []byte(name), err
	})
	if err != nil {
		log.Fatal(err) // the database's error: Redis failures never end up here
	}
	fmt.Println(string(name))
}

type User struct {
	ID    int64  `json:"id"`
	Email string `json:"email"`
}

// GetJSON caches values as JSON. Absence is cached as null (a nil *User):
// the engine deletes the key when the row is inserted.
func ExampleGetJSON() {
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	cache, err := cacheaside.New(rdb, cacheaside.Options{Prefix: "app1:"}) // rules render "app1:user:{id}"
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close()
	var db *sql.DB

	http.HandleFunc("/users/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
		u, err := cacheaside.GetJSON(r.Context(), cache, "user:"+strconv.FormatInt(id, 10),
			func(ctx context.Context) (*User, error) {
				u := &User{ID: id}
				err := db.QueryRowContext(ctx, `SELECT email FROM users WHERE id = $1`, id).Scan(&u.Email)
				if errors.Is(err, sql.ErrNoRows) {
					return nil, nil
				}
				return u, err
			})
		switch {
		case err != nil:
			http.Error(w, "database unavailable", http.StatusServiceUnavailable)
		case u == nil:
			http.NotFound(w, r)
		default:
			fmt.Fprintln(w, u.Email)
		}
	})
}

// An L1 in front of Redis for very hot keys. The engine must publish its
// invalidations (client.publish_channel); the L1 is cleared whenever the
// subscription drops, and no entry lives longer than L1.TTL.
func ExampleL1Options() {
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	cache, err := cacheaside.New(rdb, cacheaside.Options{
		L1: cacheaside.L1Options{
			Size:    10000,
			Channel: "cdc-invalidations", // = client.publish_channel of the engine
			TTL:     30 * time.Second,
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cache.Close() // stops the subscriber

	// ... cache.Get as usual; then, for a dashboard:
	s := cache.Stats.Snapshot()
	fmt.Printf("L1 hits %d, Redis hits %d, loads %d, fills refused %d, redis errors %d\n",
		s.L1Hits, s.Hits, s.Loads, s.FillsRefused, s.RedisErrors)
}

// The lease key the engine deletes with each key (client.leases: true).
func ExampleLeaseKey() {
	fmt.Println(cacheaside.LeaseKey("app1:user:42"))
	// Output: lease:{app1:user:42}
}
