package runnerproto

import (
	"os"
	"reflect"
	"regexp"
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

// The README names the runner's error codes: exactly Codes, in any order.
func TestREADMECodes(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "The runner inside the sandbox may print its own")
	para, _, _ := strings.Cut(rest, "\n\n")
	var named []string
	for _, m := range regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(para, -1) {
		named = append(named, m[1])
	}
	slices.Sort(named)
	if want := slices.Sorted(slices.Values(Codes)); !ok || !slices.Equal(named, want) {
		t.Errorf("the README names the runner's codes %v, Codes are %v", named, Codes)
	}
}
