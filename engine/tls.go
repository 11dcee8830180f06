package engine

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/internal/failpoint"
)

// redisOptions builds the go-redis options of the configuration, with TLS
// when it is on. Every Redis client of the engine comes from here.
func redisOptions(c config.Redis) (*redis.Options, error) {
	o := &redis.Options{
		Addr: c.Addr, DB: c.DB, Username: c.Username, Password: c.Password,
		DialTimeout: c.DialTimeout, ReadTimeout: c.ReadTimeout, WriteTimeout: c.WriteTimeout,
	}
	if !c.TLSEnabled() {
		return o, nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName, InsecureSkipVerify: c.TLSInsecureSkipVerify}
	// With several servers (cluster nodes, sentinels and the masters they
	// name) an empty ServerName lets each connection verify the host it
	// dials (tls.DialWithDialer fills it in).
	if t.ServerName == "" && c.Addr != "" {
		host, _, err := net.SplitHostPort(c.Addr)
		if err != nil {
			return nil, fmt.Errorf("redis.addr %q: %w", c.Addr, err)
		}
		t.ServerName = host
	}
	if c.TLSCAFile != "" {
		pem, err := os.ReadFile(c.TLSCAFile)
		if err != nil {
			return nil, &SetupError{[]string{fmt.Sprintf("redis.tls_ca_file: %v", err)}}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, &SetupError{[]string{fmt.Sprintf("redis.tls_ca_file %s holds no PEM certificate", c.TLSCAFile)}}
		}
		t.RootCAs = pool
	}
	if c.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
		if err != nil {
			return nil, &SetupError{[]string{fmt.Sprintf("redis.tls_cert_file / tls_key_file: %v", err)}}
		}
		t.Certificates = []tls.Certificate{cert}
	}
	o.TLSConfig = t
	return o, nil
}

// newRedisClient returns the engine's client for the configured topology:
// a plain client (redis.addr), a cluster client of the seed nodes
// (redis.addrs with redis.cluster) or a failover client that asks the
// sentinels (redis.addrs with redis.master_name) for the master and
// follows its failovers. maxRetries is go-redis's MaxRetries (-1: none).
// Redirections (MOVED, ASK) and TRYAGAIN are followed by the cluster
// client on its own, MaxRedirects times.
func newRedisClient(c config.Redis, maxRetries int) (redis.UniversalClient, error) {
	o, err := redisOptions(c)
	if err != nil {
		return nil, err
	}
	o.MaxRetries = maxRetries
	switch c.Topology() {
	case "cluster":
		redirects := clusterMaxRedirects
		if failpoint.Unsafe("drop-redirects") {
			redirects = -1 // a deliberately broken engine, for negative controls
		}
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: c.Addrs, Username: o.Username, Password: o.Password,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
			TLSConfig: o.TLSConfig, MaxRetries: maxRetries, MaxRedirects: redirects,
			// go-redis retries a command that failed on the network (a
			// master just killed) as it follows a redirection, up to
			// MaxRedirects times with a backoff of up to MaxRetryBackoff,
			// each after 5 dial attempts by default, without learning the
			// new slot map: 16 s per batch, stalls of a minute after a
			// failover (measured). Short backoffs and one dial keep an
			// attempt near a second; the sink then reloads the slot map
			// (sink.Sink.retry) and the next attempt reaches the promoted
			// replica.
			DialerRetries: 1, MaxRetryBackoff: clusterMaxRetryBackoff,
		}), nil
	case "sentinel":
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: c.MasterName, SentinelAddrs: c.Addrs,
			SentinelUsername: c.SentinelUsername, SentinelPassword: c.SentinelPassword,
			Username: o.Username, Password: o.Password, DB: o.DB,
			DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
			TLSConfig: o.TLSConfig, MaxRetries: maxRetries,
		}), nil
	}
	return redis.NewClient(o), nil
}

// clusterMaxRedirects bounds the MOVED / ASK / TRYAGAIN redirections one
// command follows before the error reaches the sink, which retries the
// whole batch: a slot migration moves keys one by one, so a command may
// be redirected several times.
const clusterMaxRedirects = 16

// clusterMaxRetryBackoff bounds the pause between two of those: TRYAGAIN
// lasts as long as one slot's keys take to migrate, tens of milliseconds.
const clusterMaxRetryBackoff = 64 * time.Millisecond

// tlsProblem explains a certificate verification failure, which waiting
// does not fix; "" for other errors.
func tlsProblem(err error) string {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	var rec tls.RecordHeaderError
	switch {
	case errors.As(err, &unknown):
		return fmt.Sprintf("TLS: the server certificate is signed by an unknown authority (%v): give the right CA (sslrootcert=... in the DSN for PostgreSQL, redis.tls_ca_file for Redis)", err)
	case errors.As(err, &host):
		return fmt.Sprintf("TLS: the server certificate does not name the host (%v): connect by the name in the certificate, or set redis.tls_server_name", err)
	case errors.As(err, &invalid), errors.As(err, &verify):
		return fmt.Sprintf("TLS: the server certificate was refused (%v)", err)
	case errors.As(err, &rec):
		return fmt.Sprintf("TLS: the server did not answer TLS (%v): is TLS enabled on that port?", err)
	}
	return ""
}

func isLoopback(host string) bool {
	if host == "localhost" || host == "" || host[0] == '/' { // a Unix socket directory
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// warnPlaintext warns when credentials and row data would cross a network
// without verified TLS.
func (e *Engine) warnPlaintext(pg *pgconn.Config) {
	if !isLoopback(pg.Host) && (pg.TLSConfig == nil || pg.TLSConfig.InsecureSkipVerify) {
		e.log.Warn("the PostgreSQL connection to a non-loopback host is not verified TLS: the password and row data can be read or changed on the network; use sslmode=verify-full with sslrootcert in postgres.dsn",
			zap.String("host", pg.Host))
	}
	remote := ""
	for _, a := range e.cfg.Redis.Servers() {
		if host, _, _ := net.SplitHostPort(a); !isLoopback(host) {
			remote = host
			break
		}
	}
	switch {
	case remote != "" && !e.cfg.Redis.TLSEnabled():
		e.log.Warn("the Redis connection to a non-loopback host is plaintext: the password and keys can be read or changed on the network; set redis.tls (and redis.tls_ca_file)",
			zap.String("host", remote))
	case e.cfg.Redis.TLSInsecureSkipVerify:
		e.log.Warn("redis.tls_insecure_skip_verify accepts any server certificate: the connection is encrypted but not authenticated")
	}
}
