package local

import (
	"slices"
	"testing"
)

func TestGuestArgsSetTheResyncOfEachProxier(t *testing.T) {
	for _, tc := range []struct {
		impl, mode, want string
	}{
		{ImplReference, "ipvs", "--sync-period=5m0s"},
		{ImplReference, "iptables", "--sync-period=5m0s"},
		{ImplKubeProxy, "ipvs", "--ipvs-sync-period=5m0s"},
		{ImplKubeProxy, "iptables", "--iptables-sync-period=5m0s"},
	} {
		p := &ProxierOptions{Impl: tc.impl, Mode: tc.mode}
		if got := p.guestArgs(); !slices.Equal(got, []string{tc.want}) {
			t.Errorf("%s %s: guest flags %v, want [%s]", tc.impl, tc.mode, got, tc.want)
		}
	}
}
