package server

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/runs"
)

type schema struct {
	Ref        string             `json:"$ref"`
	Type       any                `json:"type"`
	Const      string             `json:"const"`
	Enum       []string           `json:"enum"`
	Properties map[string]*schema `json:"properties"`
	Items      *schema            `json:"items"`
	OneOf      []*schema          `json:"oneOf"`
}

type document struct {
	OpenAPI    string                                `json:"openapi"`
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas map[string]*schema `json:"schemas"`
	} `json:"components"`
}

func loadDocument(t *testing.T) document {
	t.Helper()
	var d document
	dec := json.NewDecoder(strings.NewReader(string(openAPI)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if d.OpenAPI != "3.1.0" {
		t.Errorf("openapi %q, want 3.1.0", d.OpenAPI)
	}
	return d
}

// TestOpenAPI keeps openapi.json true: every route the server registers is
// in it and nothing else is, needing a key as Routes says; every field of every request, response and
// event type is in its schema and nothing else is; every event type and
// every error code is named.
func TestOpenAPI(t *testing.T) {
	d := loadDocument(t)
	f := &fakeEngine{}
	srv := New(f, openRuns(t, f, runs.Options{}), Config{})
	registered := map[string]bool{}
	for _, r := range srv.app.GetRoutes(true) {
		if r.Method == http.MethodHead {
			continue // fiber serves HEAD for every GET
		}
		p := strings.ReplaceAll(r.Path, ":id", "{id}")
		p = strings.ReplaceAll(p, "*", "{path}")
		registered[strings.ToLower(r.Method)+" "+p] = true
	}
	documented := map[string]bool{}
	for p, ops := range d.Paths {
		for m := range ops {
			documented[m+" "+p] = true
		}
	}
	for _, r := range Routes() {
		op := d.Paths[r.Path][strings.ToLower(r.Method)]
		if op == nil {
			continue // named below as not in openapi.json
		}
		var o struct {
			Security *[]any `json:"security"`
		}
		if err := json.Unmarshal(op, &o); err != nil {
			t.Fatalf("%s %s: %v", r.Method, r.Path, err)
		}
		// An empty security list is OpenAPI's "no key"; none inherits apiKey.
		if public := o.Security != nil && len(*o.Security) == 0; public != r.Public {
			t.Errorf("openapi.json: %s %s: needs no key %v, the route table says %v", r.Method, r.Path, public, r.Public)
		}
	}
	for r := range registered {
		if !documented[r] {
			t.Errorf("route %s is not in openapi.json", r)
		}
	}
	for r := range documented {
		if !registered[r] {
			t.Errorf("openapi.json has %s, which the server does not serve", r)
		}
	}

	schemas := d.Components.Schemas
	for name, v := range map[string]any{
		"Request": api.Request{}, "RunView": api.RunView{}, "RunList": api.RunList{}, "FileList": api.FileList{}, "Health": api.Health{},
		"SandboxEvent": api.SandboxEvent{}, "RunEvent": api.RunEvent{}, "FileEvent": api.FileEvent{}, "FilesSkippedEvent": api.FilesSkippedEvent{},
		"UsageEvent": api.UsageEvent{}, "LineEvent": api.LineEvent{}, "ErrorEvent": api.ErrorEvent{}, "EgressEvent": egress.Event{}, "Error": apiError{},
	} {
		s := schemas[name]
		if s == nil {
			t.Errorf("no schema %s", name)
			continue
		}
		sameFields(t, name, reflect.TypeOf(v), s)
	}
	egressField := reflect.TypeOf(api.RequestEgress{})
	sameFields(t, "Request.egress", egressField, schemas["Request"].Properties["egress"])
	if pool := schemas["Health"].Properties["pool"]; pool != nil {
		sameFields(t, "Health.pool", reflect.TypeOf(api.PoolHealth{}), pool)
	}

	// Every event type is one of Event's.
	var types []string
	for _, s := range schemas["Event"].OneOf {
		e := schemas[strings.TrimPrefix(s.Ref, "#/components/schemas/")]
		if e == nil || e.Properties["type"] == nil {
			t.Errorf("Event's %s has no type", s.Ref)
			continue
		}
		ty := e.Properties["type"]
		types = append(append(types, ty.Enum...), ty.Const)
	}
	want := append(constants(t, "../api/events.go", "Type"), egress.TypeEvent, "system", "assistant", "user", "result")
	for _, ty := range want {
		if !slices.Contains(types, ty) {
			t.Errorf("event type %q is not one of Event's in openapi.json", ty)
		}
	}
	codes := constants(t, "../api/errors.go", "Code")
	documentedCodes := slices.Clone(schemas["ErrorCode"].Enum)
	sort.Strings(codes)
	sort.Strings(documentedCodes)
	if !slices.Equal(codes, documentedCodes) {
		t.Errorf("ErrorCode enum %v, want the api's codes %v", documentedCodes, codes)
	}
}

// sameFields checks that schema s has exactly the JSON fields of type t.
func sameFields(t *testing.T, name string, ty reflect.Type, s *schema) {
	t.Helper()
	var fields []string
	var walk func(reflect.Type)
	walk = func(ty reflect.Type) {
		for i := range ty.NumField() {
			f := ty.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			switch {
			case f.Anonymous && tag == "":
				walk(f.Type)
			case tag != "-" && f.IsExported():
				fields = append(fields, tag)
			}
		}
	}
	walk(ty)
	for _, f := range fields {
		if s.Properties[f] == nil {
			t.Errorf("%s: field %q is not in openapi.json", name, f)
		}
	}
	for p := range s.Properties {
		if !slices.Contains(fields, p) {
			t.Errorf("%s: openapi.json has field %q, which %v does not", name, p, ty)
		}
	}
}

// constants are the string values of the constants named prefix* in file.
func constants(t *testing.T, file, prefix string) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, decl := range f.Decls {
		g, ok := decl.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			v := spec.(*ast.ValueSpec)
			for i, n := range v.Names {
				if !strings.HasPrefix(n.Name, prefix) || i >= len(v.Values) {
					continue
				}
				if lit, ok := v.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					s, _ := strconv.Unquote(lit.Value)
					out = append(out, s)
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no %s* constants in %s", prefix, file)
	}
	return out
}

// The document is served to anyone, keys or not.
func TestOpenAPIServed(t *testing.T) {
	url := serveFakeWith(t, &fakeEngine{}, Config{APIKeys: []string{strings.Repeat("k", 32)}})
	code, _, body := send(t, "GET", url+"/openapi.json", "", nil)
	if code != 200 || string(body) != string(openAPI) {
		t.Errorf("GET /openapi.json: %d, %d bytes", code, len(body))
	}
	if code, _, _ := send(t, "GET", url+"/metrics", "", nil); code != 401 {
		t.Errorf("GET /metrics without a key: %d, want 401", code)
	}
}
