package config

import (
	"reflect"
	"strings"
)

// limitsKey is one top-level key of limits.yaml: its json tag names it, and
// its limits tag says how a running server treats it ("restart") and which
// older name it still answers to ("was=NAME").
type limitsKey struct {
	name    string
	was     string
	restart bool
	field   int
}

// limitsKeys are read off Limits' tags once: adding a key is adding a field.
var limitsKeys = readLimitsKeys()

func readLimitsKeys() []limitsKey {
	t := reflect.TypeFor[Limits]()
	var out []limitsKey
	for i := range t.NumField() {
		f := t.Field(i)
		name := jsonName(f)
		if name == "" {
			continue
		}
		k := limitsKey{name: name, field: i}
		for _, opt := range strings.Split(f.Tag.Get("limits"), ",") {
			switch {
			case opt == "restart":
				k.restart = true
			case strings.HasPrefix(opt, "was="):
				k.was = strings.TrimPrefix(opt, "was=")
			}
		}
		out = append(out, k)
	}
	return out
}

// jsonName is the key a field is written as, or "" for none.
func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "-" || !f.IsExported() {
		return ""
	}
	return name
}

// fieldNames are the keys of struct type t, in its order: what a block's
// error message offers instead of an unknown key.
func fieldNames(t reflect.Type) string {
	var names []string
	for i := range t.NumField() {
		if n := jsonName(t.Field(i)); n != "" {
			names = append(names, n)
		}
	}
	return strings.Join(names, ", ")
}

// acceptedKeys are every name limits.yaml may use, old names included.
func acceptedKeys() []string {
	var out []string
	for _, k := range limitsKeys {
		out = append(out, k.name)
		if k.was != "" {
			out = append(out, k.was)
		}
	}
	return out
}

// RestartOnly are the limits keys a running server cannot change (its
// backend connection, run store and their upkeep are set up at start).
func RestartOnly() []string {
	var out []string
	for _, k := range limitsKeys {
		if k.restart {
			out = append(out, k.name)
		}
	}
	return out
}

// Diff names the keys whose values differ between a and b.
func Diff[T Limits | Project](a, b T) []string {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	var out []string
	for i := range va.NumField() {
		name := jsonName(va.Type().Field(i))
		if name != "" && !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, name)
		}
	}
	return out
}
