package notify

import (
	"strings"
	"testing"
	"time"
)

func TestRenderOutageAlert(t *testing.T) {
	d := AlertData{
		SOSID: "sos-1", VehicleID: "taxi-7", Kind: "medical", Region: "Cebu",
		HasLocation: true, Lat: 10.3157, Lon: 123.8854, Time: time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC), Ref: "XOT-ABC",
	}
	for _, tc := range []struct {
		name string
		lang Language
		o    OutageAlertData
		want []string
	}{
		{"English with page", English, OutageAlertData{AgentID: "cebu-1", PageURL: "https://cebu-agent.example.ph/", Presses: 3},
			[]string{"from the Cebu office agent (hub unreachable)", "SOS sos-1.", "Pressed 3 times.", "Acknowledge on https://cebu-agent.example.ph/", "Ref XOT-ABC"}},
		{"English without page", English, OutageAlertData{AgentID: "cebu-1", Presses: 1},
			[]string{"Acknowledge on the page of agent cebu-1, Cebu office."}},
		{"English with cancel", English, OutageAlertData{AgentID: "cebu-1", CancelRequested: true, CancelReason: "mistake\nsorry"},
			[]string{"Driver asked to cancel (mistake sorry); may be forced, check."}},
		{"Filipino", Filipino, OutageAlertData{AgentID: "cebu-1", Presses: 2, CancelRequested: true},
			[]string{"mula sa agent ng Cebu (hindi maabot ang hub)", "Pinindot nang 2 beses.", "Humiling ang driver na i-cancel (walang dahilan)", "page ng agent cebu-1"}},
	} {
		text := RenderOutageAlert(tc.lang, d, tc.o)
		for _, w := range tc.want {
			if !strings.Contains(text, w) {
				t.Errorf("%s: %q does not contain %q", tc.name, text, w)
			}
		}
		if strings.Contains(text, "dashboard") {
			t.Errorf("%s: %q points to the dashboard, which is unreachable during an outage", tc.name, text)
		}
		if tc.o.Presses < 2 && (strings.Contains(text, "Pressed") || strings.Contains(text, "Pinindot")) {
			t.Errorf("%s: %q counts presses for a single one", tc.name, text)
		}
	}
}

func TestRenderOutageSummary(t *testing.T) {
	en := RenderOutageSummary(English, "Davao", "davao-1", "https://davao-agent.example.ph/", 4)
	if !strings.Contains(en, "4 more SOS pending, see the regional page: https://davao-agent.example.ph/") {
		t.Errorf("English summary %q", en)
	}
	fil := RenderOutageSummary(Filipino, "Davao", "davao-1", "", 4)
	if !strings.Contains(fil, "4 pang SOS ang naghihintay") || !strings.Contains(fil, "ang page ng agent davao-1") {
		t.Errorf("Filipino summary %q", fil)
	}
}
