package egress

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestRedactAddress is the echoing internal API: it hands back its own Host header, its URL
// and their encodings, in the body and in headers. With RedactAddress none of them reaches
// the task; without it they do (the option, not luck, is what removes them).
func TestRedactAddress(t *testing.T) {
	t.Parallel()
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		self := "http://" + r.Host + "/api"
		w.Header().Set("X-Served-By", r.Host)
		w.Header().Set("Location", self+"/next")
		fmt.Fprintf(w, `{"host":%q,"self":%q,"q":%q,"b64":%q,"lower":%q}`, r.Host, self,
			url.QueryEscape(self), base64.StdEncoding.EncodeToString([]byte(r.Host)), strings.ToLower(self))
	})
	host := strings.TrimPrefix(srv.URL, "http://")
	leaks := []string{host, url.QueryEscape(srv.URL), base64.StdEncoding.EncodeToString([]byte(host))}
	for _, redactAddr := range []bool{true, false} {
		t.Run(fmt.Sprint("redact_address=", redactAddr), func(t *testing.T) {
			t.Parallel()
			f := newFixtureEP(t, &Endpoint{Name: "crm", BaseURL: mustURL(t, srv.URL+"/api"), RedactAddress: redactAddr,
				Rules: []Rule{MustParseRule("GET /**")}})
			resp, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/whoami"})
			if err != nil {
				t.Fatal(err)
			}
			body, err := readAll(t, resp)
			if err != nil {
				t.Fatal(err)
			}
			seen := body + fmt.Sprint(resp.Header)
			for _, leak := range leaks {
				if got := strings.Contains(seen, leak); got == redactAddr {
					t.Errorf("redact_address %v: the task sees %q = %v in %s", redactAddr, leak, got, seen)
				}
			}
		})
	}
}
