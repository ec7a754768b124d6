package agentimage

import (
	_ "embed"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// changelog is the image's size history: CHANGELOG.md next to this file.
//
//go:embed CHANGELOG.md
var changelog string

// SlackPercent is how far above the newest size in CHANGELOG.md a build may
// come without a new line there: every base build takes Debian's current
// security updates, which move the size by some hundred kB on their own.
const SlackPercent = 1

// SizeEntry is one line of CHANGELOG.md: the image tar's size after a
// change, and why it changed.
type SizeEntry struct {
	MB  int
	Why string
}

var entryLine = regexp.MustCompile(`^- (\d+) MB: (\S.*)$`)

// parseChangelog reads the entries, newest first: each a line
// "- <size> MB: <why>", continued on lines indented by two spaces.
func parseChangelog(text string) ([]SizeEntry, error) {
	var entries []SizeEntry
	for i, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "- "):
			m := entryLine.FindStringSubmatch(line)
			if m == nil {
				return nil, fmt.Errorf("CHANGELOG.md line %d: %q is not \"- <size> MB: <why>\"", i+1, line)
			}
			mb, err := strconv.Atoi(m[1])
			if err != nil || mb <= 0 {
				return nil, fmt.Errorf("CHANGELOG.md line %d: size %q", i+1, m[1])
			}
			entries = append(entries, SizeEntry{MB: mb, Why: m[2]})
		case strings.HasPrefix(line, "  ") && len(entries) > 0 && strings.TrimSpace(line) != "":
			entries[len(entries)-1].Why += " " + strings.TrimSpace(line)
		}
	}
	if len(entries) == 0 {
		return nil, errors.New("CHANGELOG.md records no size")
	}
	return entries, nil
}

// Budget is the largest the image tar may be: the newest size CHANGELOG.md
// records, plus SlackPercent.
func Budget() (int64, error) {
	entries, err := parseChangelog(changelog)
	if err != nil {
		return 0, err
	}
	return int64(entries[0].MB) * 1_000_000 * (100 + SlackPercent) / 100, nil
}
