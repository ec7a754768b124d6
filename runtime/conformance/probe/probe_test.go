//go:build linux

package probe

import (
	"slices"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/oci"
)

// TestProbesEveryDeniedSyscall: the fingerprint shows the answer to every
// call the profile denies, so a call added to the profile is probed too.
func TestProbesEveryDeniedSyscall(t *testing.T) {
	var probed []string
	for _, c := range Syscalls {
		name, _, _ := strings.Cut(c.Name, "(")
		probed = append(probed, name)
	}
	// x86-64 has no umount(2), only umount2: the profile names both, as
	// the runtime default does, for other architectures.
	absent := []string{"umount"}
	for _, name := range append(slices.Clone(oci.DeniedSyscalls), oci.NosysSyscalls...) {
		if !slices.Contains(probed, name) && !slices.Contains(absent, name) {
			t.Errorf("denied syscall %s has no probe", name)
		}
	}
}
