package jws

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

const typ = "test+jws"

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// mint signs header.payload with crypto/ed25519 directly, as an independent implementation.
func mint(priv ed25519.PrivateKey, header, payload string) string {
	signed := b64(header) + "." + b64(payload)
	return signed + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(priv, []byte(signed)))
}

func TestParse(t *testing.T) {
	t.Parallel()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)
	const hdr = `{"alg":"EdDSA","kid":"k1","typ":"test+jws"}`
	good := mint(priv, hdr, `{"x":1}`)
	signed, err := Sign(priv, "k1", typ, []byte(`{"x":1}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, tok string
		want      Problem // 0: parses and verifies
	}{
		{"minted independently", good, 0},
		{"made by Sign", signed, 0},
		{"leading space", " " + good, Malformed},
		{"trailing newline", good + "\n", Malformed},
		{"CRLF inside", good[:8] + "\r\n" + good[8:], Malformed},
		{"tab inside", good[:8] + "\t" + good[8:], Malformed},
		{"padding", b64(hdr) + "==." + strings.SplitN(good, ".", 2)[1], Malformed},
		{"non-canonical base64 tail bits", good[:len(good)-1] + string(good[len(good)-1]^1), Malformed},
		{"two parts", good[:strings.LastIndexByte(good, '.')], Malformed},
		{"four parts", good + ".e30", Malformed},
		{"alg none", mint(priv, `{"alg":"none","kid":"k1","typ":"test+jws"}`, `{}`), Unsigned},
		{"no alg", mint(priv, `{"kid":"k1","typ":"test+jws"}`, `{}`), Unsigned},
		{"empty signature", good[:strings.LastIndexByte(good, '.')+1], Unsigned},
		{"HS256", mint(priv, `{"alg":"HS256","kid":"k1","typ":"test+jws"}`, `{}`), BadAlgorithm},
		{"extra parameter", mint(priv, `{"alg":"EdDSA","crit":["exp"],"exp":1,"kid":"k1","typ":"test+jws"}`, `{}`), Malformed},
		{"parameter in other case", mint(priv, `{"alg":"EdDSA","KID":"k1","typ":"test+jws"}`, `{}`), Malformed},
		{"duplicate parameter", mint(priv, `{"alg":"EdDSA","kid":"k2","kid":"k1","typ":"test+jws"}`, `{}`), Malformed},
		{"kid not a string", mint(priv, `{"alg":"EdDSA","kid":1,"typ":"test+jws"}`, `{}`), Malformed},
		{"header not an object", mint(priv, `["EdDSA"]`, `{}`), Malformed},
		{"no kid", mint(priv, `{"alg":"EdDSA","typ":"test+jws"}`, `{}`), Malformed},
		{"other typ", mint(priv, `{"alg":"EdDSA","kid":"k1","typ":"JWT"}`, `{}`), Malformed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok, err := Parse(tt.tok, typ)
			if tt.want != 0 {
				var je *Error
				if !errors.As(err, &je) || je.Problem != tt.want {
					t.Fatalf("Parse(%s) = %v, want problem %d", tt.name, err, tt.want)
				}
				if strings.Contains(err.Error(), strings.TrimSpace(tt.tok)) {
					t.Fatalf("Parse(%s) error %q holds the token", tt.name, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%s) = %v, want success", tt.name, err)
			}
			if payload, ok := tok.Verify(pub); !ok || string(payload) != `{"x":1}` || tok.Kid != "k1" {
				t.Fatalf("Verify(%s) = %q, %v, kid %q; want the payload, true, k1", tt.name, payload, ok, tok.Kid)
			}
			if _, ok := tok.Verify(otherPub); ok {
				t.Fatalf("Verify(%s) with another key = true, want false", tt.name)
			}
		})
	}
	// Sign writes exactly the header Parse accepts.
	h, _ := base64.RawURLEncoding.DecodeString(strings.SplitN(signed, ".", 2)[0])
	if string(h) != hdr {
		t.Errorf("Sign header = %s, want %s", h, hdr)
	}
}
