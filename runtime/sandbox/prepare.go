package sandbox

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"os"

	"github.com/sandstorm-dev/sandstorm/oci"
)

// NewID returns a fresh sandbox id.
func NewID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "ds-" + hex.EncodeToString(b)
}

// Prepared is a validated request, ready for a backend to create.
type Prepared struct {
	ID     string
	Policy oci.Policy
	// Labels are the spec's labels and the owner label (this process);
	// oci.Container adds the managed and session labels.
	Labels map[string]string
	// Unenforced lists the items the caller allowed the backend to skip.
	Unenforced []Item
}

// Prepare is the check every backend's Create starts with: defaults and
// validates the policy, the files and the id, and fails closed when the
// policy needs an item caps does not enforce.
func Prepare(spec Spec, caps Enforcement) (Prepared, error) {
	p := Prepared{ID: spec.ID, Policy: spec.Policy.WithDefaults()}
	if err := p.Policy.Validate(); err != nil {
		return p, fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	if err := ValidateFiles(spec.Files); err != nil {
		return p, err
	}
	if spec.SessionID == "" {
		return p, fmt.Errorf("%w: session id is required", ErrInvalidSpec)
	}
	if spec.Image == "" {
		return p, fmt.Errorf("%w: image is required", ErrInvalidSpec)
	}
	if len(spec.Args) == 0 {
		return p, fmt.Errorf("%w: command is required", ErrInvalidSpec)
	}
	for _, m := range p.Policy.Mounts {
		// Refused here, the same on every backend, rather than by a daemon or at start.
		if _, err := os.Stat(m.Source); err != nil {
			return p, fmt.Errorf("%w: mount source %s: %w", ErrInvalidSpec, m.Source, err)
		}
	}
	if p.ID == "" {
		p.ID = NewID()
	}
	owner, err := Self()
	if err != nil {
		return p, fmt.Errorf("sandbox owner: %w", err)
	}
	p.Labels = maps.Clone(spec.Labels)
	if p.Labels == nil {
		p.Labels = map[string]string{}
	}
	p.Labels[oci.LabelOwner] = owner.String()
	if !ValidID(p.ID) {
		return p, fmt.Errorf("%w: sandbox id %q", ErrInvalidSpec, p.ID)
	}
	p.Unenforced, err = caps.Check(p.Policy, spec.AllowUnenforced)
	return p, err
}
