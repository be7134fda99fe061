// Package schema compiles and applies the JSON Schemas of the task catalog, for both control
// planes (SQLite and JetStream): draft 2020-12, no external $ref, errors as JSON Pointer
// locations with messages.
package schema

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/text/language"
	"golang.org/x/text/message"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// noLoader refuses every $ref outside the schema itself. The default loader reads
// file:// URLs, which would let a worker make the server open local files.
type noLoader struct{}

func (noLoader) Load(url string) (any, error) {
	return nil, fmt.Errorf("schema references %q: external $ref is not allowed; inline the definition under $defs", url)
}

// Cache keeps compiled schemas by the SHA-256 of their text, so a submit does not
// recompile the task's schema.
type Cache struct {
	mu sync.Mutex
	m  map[[32]byte]*jsonschema.Schema
}

var printer = message.NewPrinter(language.English)

const schemaURL = "urn:castellan:schema"

// Compile compiles a schema document, refusing external references.
func Compile(text []byte) (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.UseLoader(noLoader{})
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource(schemaURL, doc); err != nil {
		return nil, err
	}
	return c.Compile(schemaURL)
}

// Get returns the compiled schema for text, compiling it once.
func (c *Cache) Get(text []byte) (*jsonschema.Schema, error) {
	key := sha256.Sum256(text)
	c.mu.Lock()
	sch, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		return sch, nil
	}
	sch, err := Compile(text)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) > 4096 {
		c.m = map[[32]byte]*jsonschema.Schema{}
	}
	c.m[key] = sch
	c.mu.Unlock()
	return sch, nil
}

// Validate checks doc against sch and turns violations into located issues.
func Validate(sch *jsonschema.Schema, doc []byte) ([]api.SchemaIssue, error) {
	return validate(sch, doc, func(k jsonschema.ErrorKind) string { return k.LocalizedString(printer) })
}

// validate checks doc against sch and reports at most 20 violations, each located by a JSON
// Pointer and worded by message.
func validate(sch *jsonschema.Schema, doc []byte, message func(jsonschema.ErrorKind) string) ([]api.SchemaIssue, error) {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return nil, err
	}
	err = sch.Validate(v)
	if err == nil {
		return nil, nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return nil, err
	}
	var issues []api.SchemaIssue
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			issues = append(issues, api.SchemaIssue{Location: pointer(e.InstanceLocation), Message: message(e.ErrorKind)})
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	if len(issues) > 20 {
		issues = issues[:20]
	}
	return issues, nil
}

func pointer(path []string) string {
	var b strings.Builder
	for _, p := range path {
		b.WriteByte('/')
		b.WriteString(strings.NewReplacer("~", "~0", "/", "~1").Replace(p))
	}
	return b.String()
}

// Message summarises issues in one line for an API error.
func Message(issues []api.SchemaIssue) string {
	parts := make([]string, len(issues))
	for i, is := range issues {
		loc := is.Location
		if loc == "" {
			loc = "(root)"
		}
		parts[i] = fmt.Sprintf("at %s: %s", loc, is.Message)
	}
	return "input does not match the task's input_schema: " + strings.Join(parts, "; ")
}
