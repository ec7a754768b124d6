package oci

import "testing"

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"4gb": 4 << 30, "512m": 512 << 20, "256MiB": 256 << 20, "1073741824": 1 << 30,
		"1.5g": 3 << 29, " 64 KB ": 64 << 10, "0": 0, "2t": 2 << 40,
	}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "gb", "-1g", "4 parsecs", "1e30g", "12x"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}
