package suite

import (
	"errors"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Only the DenyServiceExternalIPs refusal, of a Service with externalIPs,
// on an existing cluster, is the provider's limit; anything else stays a
// failure.
func TestExternalIPsDenied(t *testing.T) {
	// What the admission plugin returns (k8s.io/kubernetes v1.37.2,
	// plugin/pkg/admission/network/denyserviceexternalips).
	denied := apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "ext-ip", errors.New("Use of external IPs is denied by admission control"))
	other := apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "ext-ip", errors.New("exceeded quota"))
	with := &corev1.Service{Spec: corev1.ServiceSpec{ExternalIPs: []string{"198.18.16.1"}}}
	without := &corev1.Service{}
	for _, c := range []struct {
		err      error
		svc      *corev1.Service
		provider string
		want     bool
	}{
		{denied, with, "existing", true},
		{denied, with, "local", false},
		{denied, with, "kind", false},
		{denied, without, "existing", false},
		{other, with, "existing", false},
	} {
		if got := externalIPsDenied(c.err, c.svc, c.provider); got != c.want {
			t.Errorf("%v, externalIPs %v, provider %s: %v, want %v", c.err, c.svc.Spec.ExternalIPs, c.provider, got, c.want)
		}
	}
}
