package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"
)

// Secrets of the agent credentials, each also read from <NAME>_FILE.
const (
	// envAdminToken is the bearer token of the hub's admin API, read by
	// xpress hub and xpress admin.
	envAdminToken = "XPRESS_ADMIN_TOKEN"
	// envAgentToken is the agent's token for the hub's agent listener.
	envAgentToken = "XPRESS_AGENT_TOKEN"
)

// defaultAdminHub is the admin commands' default --hub; envAdminHub
// replaces it when set.
const (
	defaultAdminHub = "http://127.0.0.1:8080"
	envAdminHub     = "XPRESS_ADMIN_HUB"
	hubUsage        = "base URL of the hub's HTTP API, e.g. https://ops.example.ph:8443; default " + envAdminHub + ", else " + defaultAdminHub
)

// envAdminCAFile names the PEM CA certificates xpress admin trusts for an
// https:// hub when --ca-file is not given.
const envAdminCAFile = "XPRESS_ADMIN_CA_FILE"

// caFileUsage is the help of the admin commands' --ca-file flag.
const caFileUsage = "PEM CA certificates that sign the hub's certificate, for an https:// --hub with a private CA; empty: " +
	envAdminCAFile + ", else the system roots"

// adminTimeout bounds one admin API request.
const adminTimeout = 30 * time.Second

// maxAdminResponse bounds an admin API response: room for the list of a
// fleet of 100,000 vehicles.
const maxAdminResponse = 64 << 20

// agentToken reads the agent's hub token from the environment or its
// file, and warns when there is none: the hub refuses such an agent
// unless its agent authentication is turned off.
func agentToken(e env, log *slog.Logger) (string, error) {
	token, err := secretFromEnv(e, envAgentToken)
	if err != nil {
		return "", err
	}
	if token == "" {
		log.Warn("no hub token configured: the hub will refuse this agent; create one with 'xpress admin agent add' and set " +
			envAgentToken + " or " + envAgentToken + "_FILE")
	}
	return token, nil
}

// runAdmin runs `xpress admin agent add|rotate|remove|list` and `xpress
// admin vehicle ...` (see runAdminVehicle), clients of the hub's admin API.
func runAdmin(ctx context.Context, args []string, e env) error {
	const usageText = "usage: xpress admin agent add|rotate|remove|list [flags] [agent id]\n       " + vehicleUsage + "\n" + operatorUsage + "\n" + tokenUsage
	if len(args) > 0 && args[0] == "vehicle" {
		return runAdminVehicle(ctx, args[1:], e)
	}
	if len(args) > 0 && args[0] == "operator" {
		return runAdminOperator(ctx, args[1:], e)
	}
	if len(args) > 0 && args[0] == "token" {
		return runAdminToken(ctx, args[1:], e)
	}
	if len(args) < 2 || args[0] != "agent" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(e.stderr, usageText)
			return flag.ErrHelp
		}
		fmt.Fprintln(e.stderr, usageText)
		return errUsage
	}
	action := args[1]
	fs := flag.NewFlagSet("admin agent "+action, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	hubURL := fs.String("hub", defaultAdminHub, hubUsage)
	caFile := fs.String("ca-file", "", caFileUsage)
	region := fs.String("region", "", "region of the agent (add)")
	grace := fs.Duration("grace", 24*time.Hour, "how long the replaced token keeps working (rotate), 0 to end it at once")
	positional, err := adminParse(fs, args[2:])
	if err != nil {
		return err
	}
	wantArgs := 1
	if action == "list" {
		wantArgs = 0
	}
	switch action {
	case "add", "rotate", "remove", "list":
	default:
		fmt.Fprintf(e.stderr, "xpress admin agent: unknown action %q\n%s\n", action, usageText)
		return errUsage
	}
	if len(positional) != wantArgs {
		fmt.Fprintf(e.stderr, "xpress admin agent %s: want %d agent id, got %d arguments\n%s\n", action, wantArgs, len(positional), usageText)
		return errUsage
	}
	c, err := newAdminClient(e, *hubURL, *caFile, adminTimeout)
	if err != nil {
		return err
	}

	switch action {
	case "add":
		if *region == "" {
			return errors.New("--region is required: the region the agent serves, e.g. NCR-Manila")
		}
		var out struct {
			ID     string `json:"id"`
			Region string `json:"region"`
			Token  string `json:"token"`
		}
		if err := c.do(ctx, http.MethodPost, "/api/v1/admin/agents", map[string]string{"id": positional[0], "region": *region}, &out); err != nil {
			return err
		}
		printToken(e, fmt.Sprintf("agent %s (%s) created", out.ID, out.Region), out.Token)
	case "rotate":
		var out struct {
			ID                 string    `json:"id"`
			Token              string    `json:"token"`
			PreviousValidUntil time.Time `json:"previous_valid_until"`
		}
		path := "/api/v1/admin/agents/" + url.PathEscape(positional[0]) + "/rotate"
		if err := c.do(ctx, http.MethodPost, path, map[string]string{"grace": grace.String()}, &out); err != nil {
			return err
		}
		summary := fmt.Sprintf("agent %s rotated; the old token stopped working", out.ID)
		if !out.PreviousValidUntil.IsZero() {
			summary = fmt.Sprintf("agent %s rotated; the old token works until %s", out.ID, out.PreviousValidUntil.Format(time.RFC3339))
		}
		printToken(e, summary, out.Token)
	case "remove":
		if err := c.do(ctx, http.MethodDelete, "/api/v1/admin/agents/"+url.PathEscape(positional[0]), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "agent %s removed: its tokens no longer work\n", positional[0])
	case "list":
		var out struct {
			Agents []struct {
				ID                 string    `json:"id"`
				Region             string    `json:"region"`
				CreatedAt          time.Time `json:"created_at"`
				RotatedAt          time.Time `json:"rotated_at"`
				PreviousValidUntil time.Time `json:"previous_valid_until"`
			} `json:"agents"`
		}
		if err := c.do(ctx, http.MethodGet, "/api/v1/admin/agents", nil, &out); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tREGION\tCREATED\tROTATED\tOLD TOKEN UNTIL")
		for _, a := range out.Agents {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.ID, a.Region, formatTime(a.CreatedAt), formatTime(a.RotatedAt), formatTime(a.PreviousValidUntil))
		}
		return tw.Flush()
	}
	return nil
}

// printToken writes the token alone on stdout, so it can be redirected to
// a file, and the summary with how to use the token on stderr.
func printToken(e env, summary, token string) {
	fmt.Fprintf(e.stderr, "%s. Its token follows, shown only this once; give it to the agent in %s or in a file named by %s_FILE (chmod 600):\n",
		summary, envAgentToken, envAgentToken)
	fmt.Fprintln(e.stdout, token)
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// adminClient calls the hub's admin API.
type adminClient struct {
	base, token string
	http        *http.Client
}

// do sends body as JSON and decodes a successful response into out. An
// error response becomes an error with the hub's message.
func (c adminClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminResponse))
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(raw))
		}
		return fmt.Errorf("%s %s: hub responded %s: %s", method, path, resp.Status, e.Error)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}
