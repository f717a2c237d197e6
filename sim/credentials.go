package sim

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/xpress-ops/tower/protocol"
)

// maxCredentialLine bounds one line of a credentials file.
const maxCredentialLine = 1024

// ReadCredentials reads "vehicle_id,token" lines, as xpress admin
// vehicle add writes them, into a map for Config.Passwords. Blank lines
// and lines starting with '#' are skipped. A line without a comma, with
// an invalid vehicle id or an empty token, or a vehicle listed twice is
// an error naming the line, never the token.
func ReadCredentials(r io.Reader) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, maxCredentialLine), maxCredentialLine)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, token, ok := strings.Cut(line, ",")
		id, token = strings.TrimSpace(id), strings.TrimSpace(token)
		switch {
		case !ok || token == "":
			return nil, fmt.Errorf("credentials line %d: want vehicle_id,token", n)
		case protocol.ValidateVehicleID(id) != nil:
			return nil, fmt.Errorf("credentials line %d: %w", n, protocol.ValidateVehicleID(id))
		case out[id] != "":
			return nil, fmt.Errorf("credentials line %d: vehicle %s is listed twice", n, id)
		}
		out[id] = token
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read credentials: %w", err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read credentials: no vehicle_id,token lines")
	}
	return out, nil
}
