package engine

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/config"
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
	if t.ServerName == "" {
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
	host, _, _ := net.SplitHostPort(e.cfg.Redis.Addr)
	switch {
	case !isLoopback(host) && !e.cfg.Redis.TLSEnabled():
		e.log.Warn("the Redis connection to a non-loopback host is plaintext: the password and keys can be read or changed on the network; set redis.tls (and redis.tls_ca_file)",
			zap.String("host", host))
	case e.cfg.Redis.TLSInsecureSkipVerify:
		e.log.Warn("redis.tls_insecure_skip_verify accepts any server certificate: the connection is encrypted but not authenticated")
	}
}
