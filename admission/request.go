package admission

import (
	"fmt"
	"strings"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
	"github.com/sandstorm-dev/sandstorm/webhook"
)

// Validate checks req whole, naming the first bad field: its own bounds
// (api.Request.Validate), then what each package acting on a part of it
// requires. Each error is an api.FieldError in the request's terms.
func Validate(req api.Request) error {
	if err := req.Validate(); err != nil {
		return err
	}
	if _, err := egressRules(req); err != nil {
		return err
	}
	if req.WebhookURL != "" {
		if err := webhook.ValidURL(req.WebhookURL); err != nil {
			return api.Invalid("webhook_url", "%v", err)
		}
	}
	if err := config.ValidateOutputFormat(req.OutputFormat); err != nil {
		// config names the key ("output_format.type: ..."): keep its naming.
		field, msg, _ := strings.Cut(strings.TrimPrefix(err.Error(), config.ErrInvalid.Error()+": "), ": ")
		return api.Invalid(field, "%s", msg)
	}
	if err := sandbox.ValidateFiles(workspaceFiles(req)); err != nil {
		return api.Invalid("files", "%s", strings.TrimPrefix(err.Error(), sandbox.ErrInvalidSpec.Error()+": "))
	}
	return nil
}

// egressRules parses req's egress.allow.
func egressRules(req api.Request) ([]egress.Rule, error) {
	if req.Egress == nil {
		return nil, nil
	}
	var out []egress.Rule
	for i, s := range req.Egress.Allow {
		rule, err := egress.ParseRule(s)
		if err != nil {
			return nil, api.Invalid(fmt.Sprintf("egress.allow[%d]", i), "%s", strings.TrimPrefix(err.Error(), egress.ErrInvalid.Error()+": "))
		}
		out = append(out, rule)
	}
	return out, nil
}

// workspaceFiles are req's files as the sandbox's workspace takes them.
func workspaceFiles(req api.Request) []sandbox.File {
	var files []sandbox.File
	for _, f := range req.WorkspaceFiles() {
		files = append(files, sandbox.File(f))
	}
	return files
}
