package egress

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestEndpointNumbers: every number of Endpoint (found by reflection, so that a field added
// later is covered) takes its documented default at zero and is refused by New when
// negative, by an error naming the field.
func TestEndpointNumbers(t *testing.T) {
	t.Parallel()
	defaults := map[string]struct {
		want any
		got  func(*endpoint) any
	}{
		"Timeout":          {time.Duration(DefaultTimeout), func(e *endpoint) any { return e.timeout }},
		"MaxResponseBytes": {int64(DefaultMaxResponseBytes), func(e *endpoint) any { return e.maxResp }},
		"MaxRequestBytes":  {int64(DefaultMaxRequestBytes), func(e *endpoint) any { return e.maxReq }},
	}
	base := func() *Endpoint {
		return &Endpoint{Name: "crm", BaseURL: mustURL(t, "http://crm.internal/"), Rules: []Rule{MustParseRule("GET /x")}}
	}
	ep, err := prepare(base())
	if err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeFor[Endpoint]()
	n := 0
	for i := range typ.NumField() {
		f := typ.Field(i)
		switch f.Type.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Float32, reflect.Float64:
		default:
			continue
		}
		n++
		d, ok := defaults[f.Name]
		if !ok {
			t.Errorf("Endpoint.%s has no documented default in this test", f.Name)
			continue
		}
		if got := d.got(ep); got != d.want {
			t.Errorf("Endpoint{%s: 0}: effective value %v, want the default %v", f.Name, got, d.want)
		}
		e := base()
		reflect.ValueOf(e).Elem().Field(i).SetInt(-1)
		_, err := New(Config{Endpoints: []*Endpoint{e}, Redactor: newSet(t)})
		if want := "egress.Endpoint." + f.Name + " is -1"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New with Endpoint.%s = -1: error = %v, want one naming %q", f.Name, err, want)
		}
	}
	if n != len(defaults) {
		t.Errorf("Endpoint has %d numbers, the test knows %d", n, len(defaults))
	}
}

// TestAuthString: the description reviews and reports print, for each kind.
func TestAuthString(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		a    Auth
		want string
	}{
		{Auth{}, "none"},
		{Auth{Kind: AuthHeader, Credential: "c", Header: "X-Api-Key", Format: "Bearer {secret}"}, "header X-Api-Key: Bearer {secret}"},
		{Auth{Kind: AuthBasic, Credential: "c", Username: "svc"}, "basic auth password for user svc"},
		{Auth{Kind: AuthQuery, Credential: "c", Param: "key"}, "query parameter key"},
	} {
		if got := tt.a.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.a, got, tt.want)
		}
	}
}
