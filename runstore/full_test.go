package runstore_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/runstore"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// TestDiskFull: writes to a full disk fail with ErrUnavailable and the
// store stays intact and readable.
func TestDiskFull(t *testing.T) {
	dir := testenv.SmallDisk(t, "2m")
	s, err := runstore.Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	r := runstore.Run{RunRecord: api.RunRecord{ID: runstore.NewID(time.Now()), Status: api.StatusRunning, Request: []byte(`{}`), CreatedAt: time.Now()}}
	if err := s.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	big := []byte(`{"line":"` + strings.Repeat("x", 64<<10) + `"}`)
	var werr error
	seq := int64(0)
	for seq < 100 && werr == nil {
		seq++
		werr = s.Append(ctx, r.ID, seq, big)
	}
	if !errors.Is(werr, runstore.ErrUnavailable) {
		t.Fatalf("after %d events of 64 KiB on 2 MiB: %v", seq, werr)
	}
	var check string
	db, err := sql.Open("sqlite3", filepath.Join(dir, "runs.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.QueryRowContext(ctx, "PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Errorf("integrity check: %q %v", check, err)
	}
	evs, err := s.Events(ctx, r.ID, 0, 1000)
	if err != nil || int64(len(evs)) != seq-1 {
		t.Errorf("read back %d events (%v), want the %d written", len(evs), err, seq-1)
	}
}
