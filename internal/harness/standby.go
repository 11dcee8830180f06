package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// StandbyOptions configures StartStandby.
type StandbyOptions struct {
	// Settings are extra postgresql.conf settings of the standby, as in
	// PostgresOptions, e.g. "primary_slot_name", "hot_standby_feedback" or
	// "sync_replication_slots". The harness sets primary_conninfo (with
	// dbname=postgres, which slot synchronization needs) unless given.
	Settings map[string]string
	// Log is as in PostgresOptions.
	Log io.Writer
}

// standbyCopySkip are data dir entries not copied to a standby.
var standbyCopySkip = map[string]bool{
	"postmaster.pid":  true,
	"postmaster.opts": true,
	"postgres.log":    true,
	"standby.signal":  true,
}

// StartStandby makes a physical standby of p and starts it: it stops p
// cleanly (mode fast), copies its data directory, starts p again, and
// starts the copy on its own free port with standby.signal and
// primary_conninfo pointing at p. No pg_basebackup is needed. p is
// unavailable for the few seconds of the copy. The standby is closed by
// its own Close; p must outlive its use.
func (p *Postgres) StartStandby(ctx context.Context, opts StandbyOptions) (_ *Postgres, err error) {
	if err := validateSettings(opts.Settings); err != nil {
		return nil, fmt.Errorf("start standby: %w", err)
	}
	dir, err := os.MkdirTemp("", "cdcinvalidate-pg-standby-*")
	if err != nil {
		return nil, fmt.Errorf("start standby: create data dir: %w", err)
	}
	s := &Postgres{
		binDir:  p.binDir,
		dataDir: dir,
		logPath: filepath.Join(dir, "postgres.log"),
		runAs:   p.runAs,
		logW:    opts.Log,
	}
	defer func() {
		if err != nil {
			if cerr := s.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
			}
			err = fmt.Errorf("start standby: %w", err)
		}
	}()

	if err := p.Stop("fast"); err != nil {
		return nil, err
	}
	copyErr := copyDataDir(p.dataDir, dir)
	if err := p.Start(); err != nil {
		return nil, errors.Join(copyErr, err)
	}
	if copyErr != nil {
		return nil, copyErr
	}
	if err := os.WriteFile(filepath.Join(dir, "standby.signal"), nil, 0o600); err != nil {
		return nil, fmt.Errorf("write standby.signal: %w", err)
	}
	baseConf, err := os.ReadFile(filepath.Join(dir, "postgresql.conf"))
	if err != nil {
		return nil, fmt.Errorf("read postgresql.conf: %w", err)
	}
	settings := map[string]string{
		"primary_conninfo": "host=127.0.0.1 port=" + strconv.Itoa(p.port) + " user=postgres dbname=postgres application_name=standby",
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	if err := s.configureAndStart(ctx, baseConf, settings); err != nil {
		return nil, err
	}
	return s, nil
}

// copyDataDir copies a stopped server's data directory, keeping modes,
// without its replication slots.
func copyDataDir(from, to string) error {
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		if standbyCopySkip[rel] {
			return nil
		}
		if filepath.Dir(rel) == "pg_replslot" {
			// The primary's slots are not the standby's (pg_basebackup skips
			// them too); failover slots reach it by synchronization.
			return filepath.SkipDir
		}
		dst := filepath.Join(to, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Mkdir(dst, info.Mode().Perm())
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		case info.Mode().IsRegular():
			return copyFile(path, dst, info.Mode().Perm())
		default:
			return nil // sockets and the like belong to the running server
		}
	})
	if err != nil {
		return fmt.Errorf("copy data dir %s: %w", from, err)
	}
	return nil
}

func copyFile(from, to string, mode fs.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Promote ends recovery of a standby (pg_ctl promote) and waits until it
// accepts writes.
func (p *Postgres) Promote(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || !p.running {
		return errors.New("promote postgres: not running")
	}
	cmd := p.command(ctx, filepath.Join(p.binDir, "pg_ctl"), "-D", p.dataDir, "-w", "-t", strconv.Itoa(int(pgStartTimeout/time.Second)), "promote")
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("promote postgres: pg_ctl promote: %w\n%s", err, out)
	}
	return nil
}
