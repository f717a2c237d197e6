package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestAgentOperatorsTopic_RoundTrip(t *testing.T) {
	topic := AgentOperatorsTopic("ncr-1")
	if topic != "xpress/v1/agents/ncr-1/operators" {
		t.Fatalf("topic = %q", topic)
	}
	if id, err := ParseAgentOperatorsTopic(topic); err != nil || id != "ncr-1" {
		t.Errorf("parse = %q, %v", id, err)
	}
	for _, bad := range []string{"xpress/v1/agents/ncr-1/batch", "xpress/v1/agents/+/operators", "xpress/v1/hub/ncr-1/operators", "xpress/v1/agents//operators"} {
		if _, err := ParseAgentOperatorsTopic(bad); err == nil {
			t.Errorf("parse %q: no error", bad)
		}
	}
}

func TestOperatorList_Validate(t *testing.T) {
	good := func() OperatorList {
		return OperatorList{Agent: "ncr-1", Region: "NCR-Manila", Operators: []OperatorCredential{
			{Username: "ana", DisplayName: "Ana Reyes", Role: OperatorRoleOperator, Hash: "$argon2id$x"},
			{Username: "root", Role: OperatorRoleAdmin, Hash: "$argon2id$y"},
		}}
	}
	l := good()
	data, err := EncodeOperatorList(&l)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeOperatorList(data)
	if err != nil || len(back.Operators) != 2 || back.Operators[0] != l.Operators[0] {
		t.Fatalf("round trip = %+v, %v", back, err)
	}
	for name, change := range map[string]func(*OperatorList){
		"bad agent":       func(l *OperatorList) { l.Agent = "NCR 1" },
		"duplicate":       func(l *OperatorList) { l.Operators[1].Username = "ana" },
		"upper case user": func(l *OperatorList) { l.Operators[0].Username = "Ana" },
		"unknown role":    func(l *OperatorList) { l.Operators[0].Role = "root" },
		"no hash":         func(l *OperatorList) { l.Operators[0].Hash = "" },
		"long hash":       func(l *OperatorList) { l.Operators[0].Hash = strings.Repeat("h", 513) },
		"control in name": func(l *OperatorList) { l.Operators[0].DisplayName = "Ana\x07" },
	} {
		l := good()
		change(&l)
		if _, err := EncodeOperatorList(&l); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrInvalidID) {
			t.Errorf("%s: error %v, want a malformed list", name, err)
		}
	}
	if _, err := DecodeOperatorList([]byte(`{"agent":"ncr-1","operators":[`)); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad JSON: %v", err)
	}
	if _, err := DecodeOperatorList(make([]byte, MaxOperatorListBytes+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge list: %v", err)
	}
}
