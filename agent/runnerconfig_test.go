package agent

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runnerproto"
)

// The config sandstorm sends is a runnerproto.Config, every field set
// (a field added to sandstorm.json is covered without touching this
// test): the runner knows each key and its kind, and nothing is lost.
func TestConfigIsTheRunners(t *testing.T) {
	var c Config
	fill(t, reflect.ValueOf(&c).Elem())
	sent, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(sent))
	dec.DisallowUnknownFields()
	var wire runnerproto.Config
	if err := dec.Decode(&wire); err != nil {
		t.Fatalf("%s is not a runnerproto.Config: %v", sent, err)
	}
	back, _ := json.Marshal(wire)
	var a, b any
	_ = json.Unmarshal(sent, &a)
	_ = json.Unmarshal(back, &b)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("sent %s, the runner's type keeps %s", sent, back)
	}
}

// fill sets every field of v to a value that is not zero.
func fill(t *testing.T, v reflect.Value) {
	t.Helper()
	switch {
	case v.Type() == reflect.TypeFor[json.RawMessage]():
		v.SetBytes([]byte(`{"k":{"v":1}}`))
	case v.Kind() == reflect.Struct:
		for i := range v.NumField() {
			fill(t, v.Field(i))
		}
	case v.Kind() == reflect.String:
		v.SetString("x")
	case v.Kind() == reflect.Int:
		v.SetInt(1)
	case v.Kind() == reflect.Bool:
		v.SetBool(true)
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.String:
		v.Set(reflect.ValueOf([]string{"x"}).Convert(v.Type()))
	default:
		t.Fatalf("fill: give a %s a value here", v.Type())
	}
}

// The runner works in its default workspace, which must be the one the
// policy mounts: sandstorm does not tell it otherwise.
func TestWorkspaceIsThePolicys(t *testing.T) {
	if oci.Workspace != runnerproto.DefaultWorkspace {
		t.Errorf("the policy's workspace is %s, the runner's %s", oci.Workspace, runnerproto.DefaultWorkspace)
	}
}
