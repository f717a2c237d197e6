package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// vehicleAddChunk is how many vehicles one add request provisions. The
// hub hashes each token, which takes a few milliseconds.
const vehicleAddChunk = 500

const vehicleUsage = "usage: xpress admin vehicle add [--out FILE] VEHICLE_ID... | rotate [--grace 24h] VEHICLE_ID | remove VEHICLE_ID | list"

// vehicleCredential is a vehicle credential as the admin API returns it.
type vehicleCredential struct {
	ID                 string    `json:"id"`
	CreatedAt          time.Time `json:"created_at"`
	RotatedAt          time.Time `json:"rotated_at"`
	PreviousValidUntil time.Time `json:"previous_valid_until"`
	RevokedAt          time.Time `json:"revoked_at"`
	Revoked            bool      `json:"revoked"`
	Version            uint64    `json:"version"`
	Token              string    `json:"token"`
}

// runAdminVehicle runs `xpress admin vehicle add|rotate|remove|list`, a
// client of the hub's admin API. Tokens are written as "vehicle_id,token"
// lines, the format of xpress sim --credentials-file.
func runAdminVehicle(ctx context.Context, args []string, e env) error {
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, vehicleUsage)
		return errUsage
	}
	action := args[0]
	fs := flag.NewFlagSet("admin vehicle "+action, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	hubURL := fs.String("hub", defaultAdminHub, hubUsage)
	caFile := fs.String("ca-file", "", caFileUsage)
	out := fs.String("out", "", `file to create with mode 0600 for the "vehicle_id,token" lines (add, rotate); empty writes them to stdout`)
	grace := fs.Duration("grace", 24*time.Hour, "how long the replaced token keeps working (rotate), 0 to end it at once")
	ids, err := adminParse(fs, args[1:])
	if err != nil {
		return err
	}
	switch {
	case action == "add" && len(ids) == 0,
		(action == "rotate" || action == "remove") && len(ids) != 1,
		action == "list" && len(ids) != 0:
		fmt.Fprintf(e.stderr, "xpress admin vehicle %s: wrong number of vehicle ids (%d)\n%s\n", action, len(ids), vehicleUsage)
		return errUsage
	case action != "add" && action != "rotate" && action != "remove" && action != "list":
		fmt.Fprintf(e.stderr, "xpress admin vehicle: unknown action %q\n%s\n", action, vehicleUsage)
		return errUsage
	}
	c, err := newAdminClient(e, *hubURL, *caFile, 3*adminTimeout)
	if err != nil {
		return err
	}

	switch action {
	case "add":
		return addVehicles(ctx, c, e, ids, *out)
	case "rotate":
		var got vehicleCredential
		path := "/api/v1/admin/vehicles/" + url.PathEscape(ids[0]) + "/rotate"
		if err := c.do(ctx, http.MethodPost, path, map[string]string{"grace": grace.String()}, &got); err != nil {
			return err
		}
		if err := writeVehicleTokens(e, *out, []vehicleCredential{got}); err != nil {
			return err
		}
		if got.PreviousValidUntil.IsZero() {
			fmt.Fprintf(e.stderr, "vehicle %s rotated; the old token stopped working\n", got.ID)
		} else {
			fmt.Fprintf(e.stderr, "vehicle %s rotated; the old token works until %s\n", got.ID, got.PreviousValidUntil.Format(time.RFC3339))
		}
	case "remove":
		if err := c.do(ctx, http.MethodDelete, "/api/v1/admin/vehicles/"+url.PathEscape(ids[0]), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "vehicle %s removed: the agents refuse its tokens once they hear of it\n", ids[0])
	case "list":
		var got struct {
			Vehicles []vehicleCredential `json:"vehicles"`
		}
		if err := c.do(ctx, http.MethodGet, "/api/v1/admin/vehicles", nil, &got); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tCREATED\tROTATED\tOLD TOKEN UNTIL\tVERSION")
		for _, v := range got.Vehicles {
			state := "live"
			if v.Revoked {
				state = "revoked " + formatTime(v.RevokedAt)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", v.ID, state, formatTime(v.CreatedAt), formatTime(v.RotatedAt), formatTime(v.PreviousValidUntil), v.Version)
		}
		return tw.Flush()
	}
	return nil
}

// addVehicles provisions ids in requests of vehicleAddChunk and writes
// the tokens. When a request fails, the tokens of the requests before it
// are still written, since those vehicles exist now.
func addVehicles(ctx context.Context, c adminClient, e env, ids []string, out string) error {
	var created []vehicleCredential
	var reqErr error
	for start := 0; start < len(ids); start += vehicleAddChunk {
		chunk := ids[start:min(start+vehicleAddChunk, len(ids))]
		var got struct {
			Vehicles []vehicleCredential `json:"vehicles"`
		}
		if reqErr = c.do(ctx, http.MethodPost, "/api/v1/admin/vehicles", map[string][]string{"ids": chunk}, &got); reqErr != nil {
			if len(created) > 0 {
				reqErr = fmt.Errorf("%w (the %d vehicles before it were created and their tokens are written)", reqErr, len(created))
			}
			break
		}
		created = append(created, got.Vehicles...)
	}
	if len(created) > 0 {
		if err := writeVehicleTokens(e, out, created); err != nil {
			return errors.Join(reqErr, err)
		}
		fmt.Fprintf(e.stderr, "%d vehicles created. Their tokens are shown only this once: install each on its vehicle as the MQTT password, with the vehicle id as user name\n", len(created))
	}
	return reqErr
}

// writeVehicleTokens writes "vehicle_id,token" lines to stdout, or to a
// new file path with mode 0600. An existing file is not overwritten.
func writeVehicleTokens(e env, path string, creds []vehicleCredential) error {
	var b strings.Builder
	for _, c := range creds {
		fmt.Fprintf(&b, "%s,%s\n", c.ID, c.Token)
	}
	if path == "" {
		_, err := io.WriteString(e.stdout, b.String())
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("--out: %w; name a new file, so tokens written earlier are not lost", err)
	}
	_, err = f.WriteString(b.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write tokens to %s: %w", path, err)
	}
	fmt.Fprintf(e.stderr, "wrote %d vehicle tokens to %s\n", len(creds), path)
	return nil
}
