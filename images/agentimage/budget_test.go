package agentimage

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseChangelog(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []SizeEntry
		err        string
	}{
		{
			name: "newest first, continued lines, prose around",
			text: "# title\n\nSome prose.\n  indented prose before any entry\n\n- 648 MB: smaller:\n  npm from the lockfile.\n- 808 MB: npm and pip\n\ntrailing prose\n",
			want: []SizeEntry{{648, "smaller: npm from the lockfile."}, {808, "npm and pip"}},
		},
		{name: "no size", text: "# title\n- why only\n", err: `line 2: "- why only"`},
		{name: "no reason", text: "- 648 MB: \n", err: "line 1"},
		{name: "other unit", text: "- 648 MiB: x\n", err: "line 1"},
		{name: "zero", text: "- 0 MB: x\n", err: "size"},
		{name: "empty", text: "# title\n", err: "records no size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseChangelog(tc.text)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestBudget(t *testing.T) {
	entries, err := parseChangelog(changelog)
	if err != nil {
		t.Fatalf("the committed CHANGELOG.md: %v", err)
	}
	got, err := Budget()
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(entries[0].MB) * 1_010_000; got != want {
		t.Errorf("budget %d, want the newest size %d MB plus 1%%: %d", got, entries[0].MB, want)
	}
}
