package testenv

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/modelserver"
)

// Scripted models and server probes for fault tests. Every answer of a scenario is one turn,
// whichever run asks: a server's runs share it.

// SlowModel answers each of its first turns requests after delay: runs
// are in flight, waiting on the model, for that long.
func SlowModel(delay time.Duration, turns int) modelserver.Scenario {
	sc := modelserver.Scenario{Name: "slow-model"}
	for i := 0; i < turns; i++ {
		sc.Turns = append(sc.Turns, modelserver.Turn{DelayMS: int(delay.Milliseconds()), Text: "late"})
	}
	return sc
}

// HangingModel never answers within a run's life (an hour per answer).
func HangingModel(turns int) modelserver.Scenario {
	sc := SlowModel(time.Hour, turns)
	sc.Name = "hanging-model"
	return sc
}

// LongAnswer answers once with size bytes of text, then waits a while:
// far more output than socket buffers hold, before the run would end.
func LongAnswer(size int) modelserver.Scenario {
	return modelserver.Scenario{Name: "long-answer", Turns: []modelserver.Turn{
		{Text: strings.Repeat("lorem ipsum ", size/12+1)},
		{DelayMS: 30000, Text: "done"},
	}}
}

// ScenarioFile writes sc where ds --scripted-model (or engine options) can
// read it, and returns its path.
func ScenarioFile(t testing.TB, sc modelserver.Scenario) string {
	t.Helper()
	data, err := json.Marshal(sc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), sc.Name+".json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Health reads GET /health of the sandstorm server at url.
func Health(t testing.TB, url string) api.Health {
	t.Helper()
	resp, err := http.Get(url + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h api.Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return h
}
