package suite

import (
	"strings"
	"testing"
	"time"
)

func TestFaultSettings(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want string // "" accepts
	}{
		{map[string]string{EnvFault: "affinity-ignored"}, ""},
		{map[string]string{EnvFault: "no-such-fault"}, "unknown fault"},
		{map[string]string{EnvFault: "affinity-ignored", EnvImpl: "kube-proxy"}, "needs PROXYMODES_IMPL=reference"},
		{map[string]string{EnvFault: "affinity-ignored", EnvProvider: "kind"}, "needs PROXYMODES_IMPL=reference"},
	} {
		for _, k := range []string{EnvMode, EnvProvider, EnvImpl, EnvClaim, EnvFault} {
			t.Setenv(k, c.env[k])
		}
		s, err := SettingsFromEnv(time.Now())
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: %v", c.env, err)
		case c.want == "" && s.Map()["fault"] != c.env[EnvFault]:
			t.Errorf("%v: the report's settings do not name the fault: %v", c.env, s.Map())
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: got %v, want an error with %q", c.env, err, c.want)
		}
	}
}
