package linewriter

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

type piece struct {
	s         string
	truncated bool
}

func TestFraming(t *testing.T) {
	tests := []struct {
		name   string
		writes []string
		max    int
		want   []piece
	}{
		{"two lines in one write", []string{"a\nb\n"}, 0, []piece{{"a", false}, {"b", false}}},
		{"line split across writes", []string{"hel", "lo\nwor", "ld\n"}, 0, []piece{{"hello", false}, {"world", false}}},
		{"final line without newline", []string{"x\ny"}, 0, []piece{{"x", false}, {"y", false}}},
		{"empty line kept", []string{"\n"}, 0, []piece{{"", false}}},
		{"long line bounded", []string{"abcdefg\n"}, 3, []piece{{"abc", true}, {"def", true}, {"g", false}}},
		{"long line across writes", []string{"ab", "cdef", "g\n"}, 3, []piece{{"abc", true}, {"def", true}, {"g", false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []piece
			w := New(tt.max, func(l []byte, tr bool) error {
				got = append(got, piece{string(l), tr})
				return nil
			})
			for _, s := range tt.writes {
				if n, err := w.Write([]byte(s)); err != nil || n != len(s) {
					t.Fatalf("write = %d, %v", n, err)
				}
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFourMiBLine(t *testing.T) {
	line := strings.Repeat("x", 4<<20)
	var got []string
	w := New(16<<20, func(l []byte, tr bool) error { got = append(got, string(l)); return nil })
	for i := 0; i < len(line); i += 65536 {
		w.Write([]byte(line[i : i+65536]))
	}
	w.Write([]byte("\n"))
	if len(got) != 1 || got[0] != line {
		t.Fatalf("got %d lines", len(got))
	}
}

func TestConsumerErrorStopsProducer(t *testing.T) {
	boom := errors.New("client gone")
	w := New(0, func([]byte, bool) error { return boom })
	if _, err := w.Write([]byte("a\n")); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if _, err := w.Write([]byte("b\n")); !errors.Is(err, boom) {
		t.Fatalf("second write got %v", err)
	}
}
