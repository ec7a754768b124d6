// Package config reads sandstorm's two configuration files: sandstorm.json
// (what the agent does, per project) and limits.yaml (what a host allows).
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// ErrInvalid is wrapped by every configuration error; messages name the key.
var ErrInvalid = errors.New("invalid configuration")

// ProjectFile is the per-project configuration's file name.
const ProjectFile = "sandstorm.json"

// Project is sandstorm.json. Absent keys are nil/zero and fall back to
// defaults; request values win over these.
type Project struct {
	SystemPrompt string          `json:"system_prompt,omitempty"`
	Model        string          `json:"model,omitempty"`
	MaxTurns     int             `json:"max_turns,omitempty"`
	OutputFormat json.RawMessage `json:"output_format,omitempty"`
	Agents       json.RawMessage `json:"agents,omitempty"`
	MCPServers   json.RawMessage `json:"mcp_servers,omitempty"`
}

var projectKeys = []string{"system_prompt", "model", "max_turns", "output_format", "agents", "mcp_servers"}

// LoadProject reads dir/sandstorm.json. A missing file is an empty Project.
// Unknown keys come back as warnings; invalid values are errors naming the key.
func LoadProject(dir string) (Project, []string, error) {
	path := filepath.Join(dir, ProjectFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Project{}, nil, nil
	}
	if err != nil {
		return Project{}, nil, fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
	}
	p, warnings, err := ParseProject(data)
	if err != nil {
		return p, warnings, fmt.Errorf("%s: %w", path, err)
	}
	for i := range warnings {
		warnings[i] = path + ": " + warnings[i]
	}
	return p, warnings, nil
}

// ParseProject parses and validates sandstorm.json content.
func ParseProject(data []byte) (Project, []string, error) {
	var p Project
	keys, err := objectKeys(data)
	if err != nil {
		return p, nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	warnings := unknownKeys(keys, projectKeys)
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&p); err != nil {
		return p, warnings, fmt.Errorf("%w: %s", ErrInvalid, describeJSONError(err))
	}
	if err := p.Validate(); err != nil {
		return p, warnings, err
	}
	p.Agents = normalizeAgents(p.Agents)
	return p, warnings, nil
}

// normalizeAgents turns the Python sandstorm-docker's subagent form
// ({"system_prompt", "model"}) into the SDK's ({"description", "prompt",
// "model"}): a missing description names the agent.
func normalizeAgents(raw json.RawMessage) json.RawMessage {
	if isNull(raw) {
		return raw
	}
	var agents map[string]map[string]any
	if json.Unmarshal(raw, &agents) != nil {
		return raw
	}
	for name, a := range agents {
		if sys, ok := a["system_prompt"].(string); ok {
			if p, _ := a["prompt"].(string); p == "" {
				a["prompt"] = sys
			}
			delete(a, "system_prompt")
		}
		if d, _ := a["description"].(string); d == "" {
			a["description"] = "Subagent " + name
		}
	}
	out, err := json.Marshal(agents)
	if err != nil {
		return raw
	}
	return out
}

// Validate checks every value, naming the key of the first bad one.
func (p Project) Validate() error {
	if p.MaxTurns < 0 || p.MaxTurns > 1000 {
		return fmt.Errorf("%w: max_turns: %d is outside 1..1000", ErrInvalid, p.MaxTurns)
	}
	if err := ValidateOutputFormat(p.OutputFormat); err != nil {
		return err
	}
	if err := validateAgents(p.Agents); err != nil {
		return err
	}
	return validateMCPServers(p.MCPServers)
}

// ValidateOutputFormat accepts {"type":"json_schema","schema":{...}}.
func ValidateOutputFormat(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var of struct {
		Type   string          `json:"type"`
		Schema json.RawMessage `json:"schema"`
	}
	if err := json.Unmarshal(raw, &of); err != nil {
		return fmt.Errorf("%w: output_format: must be an object with type and schema", ErrInvalid)
	}
	if of.Type != "json_schema" {
		return fmt.Errorf("%w: output_format.type: %q is not json_schema", ErrInvalid, of.Type)
	}
	var schema map[string]any
	if json.Unmarshal(of.Schema, &schema) != nil || schema == nil {
		return fmt.Errorf("%w: output_format.schema: must be a JSON Schema object", ErrInvalid)
	}
	return nil
}

func validateAgents(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var agents map[string]map[string]any
	if err := json.Unmarshal(raw, &agents); err != nil {
		return fmt.Errorf("%w: agents: must map a name to an object", ErrInvalid)
	}
	for _, name := range sortedKeys(agents) {
		a := agents[name]
		prompt, _ := a["prompt"].(string)
		sys, _ := a["system_prompt"].(string)
		if prompt == "" && sys == "" {
			return fmt.Errorf("%w: agents.%s: needs a prompt (or system_prompt)", ErrInvalid, name)
		}
		if m, ok := a["model"]; ok {
			if _, isStr := m.(string); !isStr {
				return fmt.Errorf("%w: agents.%s.model: must be a string", ErrInvalid, name)
			}
		}
	}
	return nil
}

func validateMCPServers(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var servers map[string]struct {
		Type    string `json:"type"`
		Command string `json:"command"`
		URL     string `json:"url"`
	}
	if err := json.Unmarshal(raw, &servers); err != nil {
		return fmt.Errorf("%w: mcp_servers: must map a name to an object", ErrInvalid)
	}
	for _, name := range sortedKeys(servers) {
		s := servers[name]
		switch s.Type {
		case "", "stdio":
			if s.Command == "" {
				return fmt.Errorf("%w: mcp_servers.%s.command: required for a stdio server", ErrInvalid, name)
			}
		case "sse", "http":
			if s.URL == "" {
				return fmt.Errorf("%w: mcp_servers.%s.url: required for an %s server", ErrInvalid, name, s.Type)
			}
		default:
			return fmt.Errorf("%w: mcp_servers.%s.type: %q is not one of stdio, sse, http", ErrInvalid, name, s.Type)
		}
	}
	return nil
}

func objectKeys(data []byte) ([]string, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("must be a JSON object, not %s", te.Value)
		}
		return nil, errors.New(describeJSONError(err))
	}
	return sortedKeys(m), nil
}

func unknownKeys(keys, known []string) []string {
	var w []string
	for _, k := range keys {
		found := false
		for _, kk := range known {
			if k == kk {
				found = true
			}
		}
		if !found {
			w = append(w, fmt.Sprintf("unknown key %q ignored", k))
		}
	}
	return w
}

// describeJSONError names the field of a type mismatch.
func describeJSONError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		msg := fmt.Sprintf("must be %s, not %s", JSONKind(te.Type.Kind().String()), te.Value)
		if te.Field == "" {
			return msg
		}
		return te.Field + ": " + msg
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("not valid JSON at byte %d: %v", se.Offset, err)
	}
	return err.Error()
}

// JSONKind names a Go kind as JSON users know it ("a number", "a string").
func JSONKind(k string) string {
	switch k {
	case "int", "int64", "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "slice", "array":
		return "an array"
	}
	return "an object"
}

func isNull(raw json.RawMessage) bool {
	return len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
