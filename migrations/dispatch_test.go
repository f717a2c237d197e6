package migrations

import (
	"context"
	"database/sql"
	"log/slog"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"github.com/xpress-ops/tower/internal/pgtest"
)

// TestDispatchMigration_DownAndUp checks that the dispatch migration's
// Down section removes what its Up section created, and that Up applies
// it again on a database that holds incidents from before it.
func TestDispatchMigration_DownAndUp(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := sql.Open("pgx", pgtest.NewDatabase(t))
	if err != nil {
		t.Fatalf("sql.Open: %v", err)
	}
	defer db.Close()

	if err := Up(ctx, db, nil); err != nil {
		t.Fatalf("Up: %v", err)
	}
	provider, err := newProvider(db, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := provider.DownTo(ctx, 2); err != nil {
		t.Fatalf("DownTo(2): %v", err)
	}
	for _, table := range []string{"contacts", "notifications", "incident_presses"} {
		if exists(ctx, t, db, `SELECT to_regclass($1) IS NOT NULL`, table) {
			t.Errorf("table %s still exists after Down", table)
		}
	}
	if exists(ctx, t, db, `SELECT count(*) > 0 FROM information_schema.columns WHERE table_name = 'incidents' AND column_name = $1`, "escalation_level") {
		t.Error("incidents.escalation_level still exists after Down")
	}

	// An incident stored before the migration gets level 0.
	if _, err := db.ExecContext(ctx, `
		INSERT INTO incidents (sos_id, vehicle_id, agent_id, kind, state, has_location, pressed_at, received_at, opened_at, updated_at)
		VALUES ('sos-1', 'veh-1', 'agent-1', 'panic', 'open', false, now(), now(), now(), now())`); err != nil {
		t.Fatalf("insert incident: %v", err)
	}
	if err := Up(ctx, db, nil); err != nil {
		t.Fatalf("Up after Down: %v", err)
	}
	var level int
	if err := db.QueryRowContext(ctx, `SELECT escalation_level FROM incidents WHERE sos_id = 'sos-1'`).Scan(&level); err != nil {
		t.Fatalf("read escalation level: %v", err)
	}
	if level != 0 {
		t.Errorf("escalation level of an older incident = %d, want 0", level)
	}
	for _, table := range []string{"contacts", "notifications", "incident_presses"} {
		if !exists(ctx, t, db, `SELECT to_regclass($1) IS NOT NULL`, table) {
			t.Errorf("table %s missing after Up", table)
		}
	}

	// The outbox allows one notification per incident, channel and address.
	insert := `INSERT INTO notifications (incident_id, channel, address, language, reason, state, next_attempt_at, created_at, updated_at)
		SELECT id, 'sms', '+639171234567', 'en', 'opened', 'pending', now(), now(), now() FROM incidents WHERE sos_id = 'sos-1'`
	if _, err := db.ExecContext(ctx, insert); err != nil {
		t.Fatalf("insert notification: %v", err)
	}
	if _, err := db.ExecContext(ctx, insert); err == nil {
		t.Error("a second notification with the same incident, channel and address was accepted")
	}
	// A pending notification needs its due time.
	if _, err := db.ExecContext(ctx, `INSERT INTO notifications (incident_id, channel, address, language, reason, state, created_at, updated_at)
		SELECT id, 'email', 'ana@example.ph', 'en', 'opened', 'pending', now(), now() FROM incidents WHERE sos_id = 'sos-1'`); err == nil {
		t.Error("a pending notification without next_attempt_at was accepted")
	}
}

func exists(ctx context.Context, t *testing.T, db *sql.DB, query string, arg any) bool {
	t.Helper()
	var ok bool
	if err := db.QueryRowContext(ctx, query, arg).Scan(&ok); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return ok
}
