package passhash

import (
	"errors"
	"strings"
	"testing"
)

// fast keeps the tests quick; the parameters do not change the logic.
var fast = Params{Memory: 64, Time: 1, Threads: 1}

func TestHash_VerifiesOnlyTheSameSecret(t *testing.T) {
	h, err := Hash("correct horse", fast)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("hash %q lacks the PHC prefix with its parameters", h)
	}
	if err := Verify(h, "correct horse"); err != nil {
		t.Fatalf("Verify(right secret) = %v, want nil", err)
	}
	for _, wrong := range []string{"", "correct hors", "correct horse ", "Correct horse"} {
		if err := Verify(h, wrong); !errors.Is(err, ErrMismatch) {
			t.Errorf("Verify(%q) = %v, want ErrMismatch", wrong, err)
		}
	}
	h2, _ := Hash("correct horse", fast)
	if h2 == h {
		t.Error("two hashes of one secret are equal: the salt is not random")
	}
}

func TestVerify_RejectsMalformedHashes(t *testing.T) {
	good, _ := Hash("s", fast)
	parts := strings.Split(good, "$")
	for name, h := range map[string]string{
		"empty":          "",
		"bcrypt":         "$2a$10$abcdefghijklmnopqrstuv",
		"argon2i":        strings.Replace(good, "argon2id", "argon2i", 1),
		"old version":    strings.Replace(good, "v=19", "v=16", 1),
		"huge memory":    strings.Join([]string{"", parts[1], parts[2], "m=4194304,t=1,p=1", parts[4], parts[5]}, "$"),
		"huge time":      strings.Join([]string{"", parts[1], parts[2], "m=64,t=1000,p=1", parts[4], parts[5]}, "$"),
		"zero threads":   strings.Join([]string{"", parts[1], parts[2], "m=64,t=1,p=0", parts[4], parts[5]}, "$"),
		"bad salt":       strings.Join([]string{"", parts[1], parts[2], parts[3], "!!", parts[5]}, "$"),
		"short hash":     strings.Join([]string{"", parts[1], parts[2], parts[3], parts[4], "AAAA"}, "$"),
		"missing fields": "$argon2id$v=19$m=64,t=1,p=1",
	} {
		if err := Verify(h, "s"); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Verify = %v, want ErrMalformed", name, err)
		}
	}
}

func TestParamsOf_ReadsTheHashParameters(t *testing.T) {
	h, _ := Hash("s", Params{Memory: 128, Time: 2, Threads: 1})
	p, err := ParamsOf(h)
	if err != nil || p != (Params{Memory: 128, Time: 2, Threads: 1}) {
		t.Fatalf("ParamsOf = %+v, %v", p, err)
	}
}

func BenchmarkVerify(b *testing.B) {
	for _, c := range []struct {
		name string
		p    Params
	}{{"token", Token}, {"password", Password}} {
		h, _ := Hash("secret", c.p)
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if err := Verify(h, "secret"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
