package runnerproto

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// Every variable is SANDSTORM_ something, and each its own: the runner's
// tests tell the runner's own reads by that prefix.
func TestEnvNames(t *testing.T) {
	v := reflect.ValueOf(Env)
	var names []string
	for i := range v.NumField() {
		name := v.Field(i).String()
		if !strings.HasPrefix(name, "SANDSTORM_") || slices.Contains(names, name) {
			t.Errorf("Env.%s = %q: not SANDSTORM_…, or a name twice", v.Type().Field(i).Name, name)
		}
		names = append(names, name)
	}
}

func TestDescribeConfigFields(t *testing.T) {
	want := []string{"prompt", "model", "max_turns", "system_prompt", "output_format", "agents", "mcp_servers", "allowed_tools", "include_partial_messages"}
	if got := Describe().ConfigFields; !slices.Equal(got, want) {
		t.Errorf("config fields %v, want %v", got, want)
	}
}
