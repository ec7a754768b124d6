package agentimage_test

import (
	"errors"
	"os"
	"testing"

	"github.com/sandstorm-dev/sandstorm/images/agentimage"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// TestBuiltImageWithinBudget holds the image the suite runs (make test
// builds it first) to the size CHANGELOG.md records: an image that grew
// needs a line there saying why.
func TestBuiltImageWithinBudget(t *testing.T) {
	tar := testenv.AgentImageTar(t)
	st, err := os.Stat(tar)
	if errors.Is(err, os.ErrNotExist) && testing.Short() {
		t.Skipf("no agent image at %s (make agentimage builds it)", tar)
	}
	if err != nil {
		t.Fatalf("agent image: %v (make agentimage builds it)", err)
	}
	budget, err := agentimage.Budget()
	if err != nil {
		t.Fatal(err)
	}
	size, limit := float64(st.Size())/1e6, float64(budget)/1e6
	if st.Size() > budget {
		t.Fatalf("%s is %.1f MB, over its budget of %.1f MB: trim what the agent does not need (ds image build lists the largest paths of each layer), or say in images/agentimage/CHANGELOG.md why it grows", tar, size, limit)
	}
	t.Logf("%s: %.1f MB, budget %.1f MB", tar, size, limit)
}
