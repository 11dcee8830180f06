package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// testCA is a self-signed CA and a server certificate it signed for
// 127.0.0.1 and localhost, as PEM.
type testCA struct {
	caPEM, certPEM, keyPEM []byte
}

func newTestCA(t *testing.T) testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cdcinvalidate test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTpl, caTpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{
		caPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTLSToPostgresAndRedis runs the engine over verified TLS to both
// servers (sslmode=verify-full against a self-signed CA; Redis tls-port
// with redis.tls_ca_file), checks that the replication connection really
// is encrypted, and that a wrong CA is refused at start with the fix.
func TestTLSToPostgresAndRedis(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	dir := t.TempDir()
	caFile := writeFile(t, dir, "ca.pem", ca.caPEM)
	certFile := writeFile(t, dir, "redis.crt", ca.certPEM)
	keyFile := writeFile(t, dir, "redis.key", ca.keyPEM)
	tlsPort, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t}
	f.pg = harness.PostgresT(t, harness.PostgresOptions{
		Files:    map[string][]byte{"server.crt": ca.certPEM, "server.key": ca.keyPEM},
		Settings: map[string]string{"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"},
	})
	f.rd = harness.RedisT(t, harness.RedisOptions{Args: []string{
		"--tls-port", fmt.Sprint(tlsPort), "--tls-cert-file", certFile, "--tls-key-file", keyFile,
		"--tls-ca-cert-file", caFile, "--tls-auth-clients", "no",
	}})
	f.connect()
	f.exec(schema)
	dsn := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=verify-full&sslrootcert=%s", f.pg.Port(), caFile)
	cfg := fmt.Sprintf("postgres:\n  dsn: %q\n  status_interval: 1s\nredis:\n  addr: \"127.0.0.1:%d\"\n  tls_ca_file: %q\n%s", dsn, tlsPort, caFile, rules)
	f.cfgPath = f.writeConfig(cfg)
	p := f.startBinaryStreaming(f.cfgPath)

	var ssl bool
	if err := f.db.QueryRow(f.ctx(), `SELECT s.ssl FROM pg_stat_ssl s JOIN pg_replication_slots r ON r.active_pid = s.pid WHERE r.slot_name = 'cdcinvalidate'`).Scan(&ssl); err != nil || !ssl {
		t.Fatalf("replication connection ssl = %v (%v), want true", ssl, err)
	}
	f.set("user:1")
	f.exec(`INSERT INTO users VALUES (1, 'a@x', '', '')`)
	f.barrier()
	f.wantGone("user:1")
	if code, _ := p.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}

	other := newTestCA(t)
	wrongCA := writeFile(t, dir, "other-ca.pem", other.caPEM)
	badPG := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=verify-full&sslrootcert=%s", f.pg.Port(), wrongCA)
	f.startFails(fmt.Sprintf("postgres:\n  dsn: %q\nredis:\n  addr: \"127.0.0.1:%d\"\n  tls_ca_file: %q\n%s", badPG, tlsPort, caFile, rules),
		[]string{"unknown authority", "sslrootcert"})
	f.startFails(fmt.Sprintf("postgres:\n  dsn: %q\nredis:\n  addr: \"127.0.0.1:%d\"\n  tls_ca_file: %q\n%s", dsn, tlsPort, wrongCA, rules),
		[]string{"unknown authority", "redis.tls_ca_file"})
}
