package main

import (
	"bufio"
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

	"github.com/xpress-ops/tower/internal/tlsconfig"
)

const (
	operatorUsage = "usage: xpress admin operator add --role ROLE --regions R1,R2 [--display-name NAME] [--password-file FILE] USERNAME\n" +
		"       xpress admin operator set [--role ROLE] [--regions R1,R2] [--display-name NAME] [--disable|--enable] [--new-password] [--password-file FILE] USERNAME\n" +
		"       xpress admin operator list | remove USERNAME | unlock USERNAME"
	tokenUsage = "usage: xpress admin token add --operator USERNAME --name NAME | list | remove ID"
)

// adminStdin is the source of passwords when no --password-file is
// given. Tests replace it.
var adminStdin io.Reader = os.Stdin

// adminParse parses flags that may come before, between or after the
// positional arguments, and returns the positional ones.
func adminParse(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// newAdminClient returns a client of the hub at hubURL authenticated with
// the admin token from the environment or its file, whose requests each
// take at most timeout. caFile, or else XPRESS_ADMIN_CA_FILE, names PEM
// CA certificates to trust for an https:// hub instead of the system's.
func newAdminClient(e env, hubURL, caFile string, timeout time.Duration) (adminClient, error) {
	if hubURL == defaultAdminHub && e.getenv(envAdminHub) != "" {
		hubURL = e.getenv(envAdminHub)
	}
	if err := checkHTTPURL(hubURL); err != nil {
		return adminClient{}, fmt.Errorf("--hub: %w", err)
	}
	if caFile == "" {
		caFile = e.getenv(envAdminCAFile)
	}
	transport := http.DefaultTransport
	if caFile != "" {
		if !strings.HasPrefix(strings.ToLower(hubURL), "https://") {
			return adminClient{}, fmt.Errorf("--ca-file (%s) is set but --hub %q is not an https:// URL", envAdminCAFile, hubURL)
		}
		tlsCfg, err := tlsconfig.ClientConfig(caFile)
		if err != nil {
			return adminClient{}, fmt.Errorf("--ca-file (%s): %w", envAdminCAFile, err)
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = tlsCfg
		transport = t
	}
	token, err := secretFromEnv(e, envAdminToken)
	if err != nil {
		return adminClient{}, err
	}
	if token == "" {
		return adminClient{}, fmt.Errorf("no admin token: set %s or %s_FILE to the hub's admin token", envAdminToken, envAdminToken)
	}
	return adminClient{base: strings.TrimRight(hubURL, "/"), token: token, http: &http.Client{Timeout: timeout, Transport: transport}}, nil
}

// readPassword reads a password from file, which must be readable by its
// owner only, or else the first line of adminStdin. Passwords are never
// taken from a flag, which other users could read in the process list.
// Surrounding white space is dropped.
func readPassword(e env, file string) (string, error) {
	if file != "" {
		return readSecretFile(file)
	}
	fmt.Fprintln(e.stderr, "reading the password from standard input (one line)")
	line, err := bufio.NewReader(adminStdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read the password from standard input: %w", err)
	}
	pw := strings.TrimSpace(line)
	if pw == "" {
		return "", errors.New("no password on standard input: pipe it in, or use --password-file with a file of mode 0600")
	}
	return pw, nil
}

// splitRegions turns "NCR-Manila, Cebu" into its region names.
func splitRegions(s string) []string {
	var out []string
	for _, r := range strings.Split(s, ",") {
		if r = strings.TrimSpace(r); r != "" {
			out = append(out, r)
		}
	}
	return out
}

// operatorInfo is an operator as the admin API returns it.
type operatorInfo struct {
	Username     string    `json:"username"`
	DisplayName  string    `json:"display_name"`
	Role         string    `json:"role"`
	Regions      []string  `json:"regions"`
	Disabled     bool      `json:"disabled"`
	FailedLogins int       `json:"failed_logins"`
	LockedUntil  time.Time `json:"locked_until"`
}

// runAdminOperator runs `xpress admin operator add|set|list|remove|unlock`,
// a client of the hub's admin API.
func runAdminOperator(ctx context.Context, args []string, e env) error {
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, operatorUsage)
		return errUsage
	}
	action := args[0]
	fs := flag.NewFlagSet("admin operator "+action, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	hubURL := fs.String("hub", defaultAdminHub, hubUsage)
	caFile := fs.String("ca-file", "", caFileUsage)
	role := fs.String("role", "", "role: operator, supervisor or admin (add, set)")
	regions := fs.String("regions", "", `comma-separated regions the operator sees, "*" for all (add, set)`)
	displayName := fs.String("display-name", "", "name shown on the dashboard; the user name when empty (add)")
	passwordFile := fs.String("password-file", "", "file of mode 0600 holding the password; standard input when empty (add, set --new-password)")
	newPassword := fs.Bool("new-password", false, "set a new password, read from --password-file or standard input (set)")
	disable := fs.Bool("disable", false, "disable the operator, ending its sessions (set)")
	enable := fs.Bool("enable", false, "enable a disabled operator (set)")
	positional, err := adminParse(fs, args[1:])
	if err != nil {
		return err
	}
	want := 1
	switch action {
	case "list":
		want = 0
	case "add", "set", "remove", "unlock":
	default:
		fmt.Fprintf(e.stderr, "xpress admin operator: unknown action %q\n%s\n", action, operatorUsage)
		return errUsage
	}
	if len(positional) != want {
		fmt.Fprintf(e.stderr, "xpress admin operator %s: want %d user name, got %d arguments\n%s\n", action, want, len(positional), operatorUsage)
		return errUsage
	}
	c, err := newAdminClient(e, *hubURL, *caFile, adminTimeout)
	if err != nil {
		return err
	}
	var path string
	if want == 1 {
		path = "/api/v1/admin/operators/" + url.PathEscape(positional[0])
	}

	switch action {
	case "add":
		if *role == "" || *regions == "" {
			return errors.New(`--role and --regions are required, e.g. --role operator --regions NCR-Manila (or "*" for all)`)
		}
		name := *displayName
		if name == "" {
			name = positional[0]
		}
		pw, err := readPassword(e, *passwordFile)
		if err != nil {
			return err
		}
		var out operatorInfo
		body := map[string]any{"username": positional[0], "display_name": name, "role": *role, "regions": splitRegions(*regions), "password": pw}
		if err := c.do(ctx, http.MethodPost, "/api/v1/admin/operators", body, &out); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "operator %s created: role %s, regions %s\n", out.Username, out.Role, strings.Join(out.Regions, ","))
	case "set":
		body := map[string]any{}
		if *role != "" {
			body["role"] = *role
		}
		if *regions != "" {
			body["regions"] = splitRegions(*regions)
		}
		if *displayName != "" {
			body["display_name"] = *displayName
		}
		if *disable && *enable {
			return errors.New("--disable and --enable exclude each other")
		}
		if *disable || *enable {
			body["disabled"] = *disable
		}
		if *newPassword {
			pw, err := readPassword(e, *passwordFile)
			if err != nil {
				return err
			}
			body["password"] = pw
		}
		if len(body) == 0 {
			return errors.New("nothing to change: give --role, --regions, --display-name, --disable, --enable or --new-password")
		}
		var out operatorInfo
		if err := c.do(ctx, http.MethodPatch, path, body, &out); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "operator %s changed: role %s, regions %s, disabled %t\n", out.Username, out.Role, strings.Join(out.Regions, ","), out.Disabled)
	case "unlock":
		if err := c.do(ctx, http.MethodPatch, path, map[string]any{"unlock": true}, nil); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "operator %s unlocked\n", positional[0])
	case "remove":
		if err := c.do(ctx, http.MethodDelete, path, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "operator %s removed, with its sessions and API tokens\n", positional[0])
	case "list":
		var out struct {
			Operators []operatorInfo `json:"operators"`
		}
		if err := c.do(ctx, http.MethodGet, "/api/v1/admin/operators", nil, &out); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "USERNAME\tNAME\tROLE\tREGIONS\tDISABLED\tLOCKED UNTIL")
		for _, o := range out.Operators {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%s\n", o.Username, o.DisplayName, o.Role, strings.Join(o.Regions, ","), o.Disabled, formatTime(o.LockedUntil))
		}
		return tw.Flush()
	}
	return nil
}

// runAdminToken runs `xpress admin token add|list|remove`, a client of
// the hub's admin API.
func runAdminToken(ctx context.Context, args []string, e env) error {
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, tokenUsage)
		return errUsage
	}
	action := args[0]
	fs := flag.NewFlagSet("admin token "+action, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	hubURL := fs.String("hub", defaultAdminHub, hubUsage)
	caFile := fs.String("ca-file", "", caFileUsage)
	operator := fs.String("operator", "", "operator the token acts as, with its role and regions (add)")
	name := fs.String("name", "", "what the token is for, e.g. cad bridge (add)")
	positional, err := adminParse(fs, args[1:])
	if err != nil {
		return err
	}
	want := 0
	switch action {
	case "remove":
		want = 1
	case "add", "list":
	default:
		fmt.Fprintf(e.stderr, "xpress admin token: unknown action %q\n%s\n", action, tokenUsage)
		return errUsage
	}
	if len(positional) != want {
		fmt.Fprintf(e.stderr, "xpress admin token %s: want %d arguments, got %d\n%s\n", action, want, len(positional), tokenUsage)
		return errUsage
	}
	c, err := newAdminClient(e, *hubURL, *caFile, adminTimeout)
	if err != nil {
		return err
	}
	switch action {
	case "add":
		if *operator == "" || *name == "" {
			return errors.New("--operator and --name are required")
		}
		var out struct {
			ID    int64  `json:"id"`
			Token string `json:"token"`
		}
		if err := c.do(ctx, http.MethodPost, "/api/v1/admin/tokens", map[string]string{"operator": *operator, "name": *name}, &out); err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "API token %d for operator %s created. It follows, shown only this once; send it as Authorization: Bearer <token>:\n", out.ID, *operator)
		fmt.Fprintln(e.stdout, out.Token)
	case "remove":
		if err := c.do(ctx, http.MethodDelete, "/api/v1/admin/tokens/"+url.PathEscape(positional[0]), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "API token %s revoked\n", positional[0])
	case "list":
		var out struct {
			Tokens []struct {
				ID         int64     `json:"id"`
				Name       string    `json:"name"`
				Operator   string    `json:"operator"`
				CreatedAt  time.Time `json:"created_at"`
				LastUsedAt time.Time `json:"last_used_at"`
				RevokedAt  time.Time `json:"revoked_at"`
			} `json:"tokens"`
		}
		if err := c.do(ctx, http.MethodGet, "/api/v1/admin/tokens", nil, &out); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tOPERATOR\tCREATED\tLAST USED\tREVOKED")
		for _, t := range out.Tokens {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Operator, formatTime(t.CreatedAt), formatTime(t.LastUsedAt), formatTime(t.RevokedAt))
		}
		return tw.Flush()
	}
	return nil
}
