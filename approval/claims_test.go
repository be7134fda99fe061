package approval

import (
	"testing"
)

// claimSeeds are payloads for the claims readers: the plain form a signer writes, and the
// forms the one-pass reader must hand to the tree (or read exactly as the tree does).
var claimSeeds = []struct {
	payload string
	plain   bool // read in one pass rather than handed to the tree
}{
	{`{"exp":1790000000,"iat":1789990000,"input_sha256":"74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b","job":"j-1","max_attempts":3,"nonce":"AAAAAAAAAAAAAAAAAAAAAA","pool":"acme","sub":"alice","task":"echo","task_version":"v1"}`, true},
	{` { "job" : "j\u002d1" , "auto" : true , "sub" : null , "iat" : -5 , "exp" : 0 } `, true},
	{`{"task":"\ud83d\ude00\u00e9"}`, true},
	{`{"max_attempts":123456789012345}`, true},
	{`{}`, true},
	{`{"job":"a","job":"b"}`, false},
	{`{"JOB":"a"}`, false},
	{`{"iat":1e9}`, false},
	{`{"iat":1000000000.0}`, false},
	{`{"iat":0123}`, false},
	{`{"iat":9007199254740993}`, false},
	{`{"auto":"true"}`, false},
	{`{"auto":fals}`, false},
	{`{"task":["x"]}`, false},
	{`{"task":"a"}x`, false},
	{`[]`, false},
	{`{"task":"a",}`, false},
}

// TestScanClaimsAgreesWithTree checks the one-pass claims reader against the tree on
// inputs that exercise each way out of the plain case.
func TestScanClaimsAgreesWithTree(t *testing.T) {
	for _, s := range claimSeeds {
		if plain := checkScanAgainstTree(t, []byte(s.payload)); plain != s.plain {
			t.Errorf("one-pass read of %s: %v, want %v", s.payload, plain, s.plain)
		}
	}
}

// FuzzDecodeClaims checks that whatever the one-pass reader accepts, the tree decodes to
// the same claims and presence set.
func FuzzDecodeClaims(f *testing.F) {
	for _, s := range claimSeeds {
		f.Add([]byte(s.payload))
	}
	f.Fuzz(func(t *testing.T, payload []byte) { checkScanAgainstTree(t, payload) })
}

func checkScanAgainstTree(t *testing.T, payload []byte) bool {
	t.Helper()
	c, present, ok := scanClaims(payload)
	if !ok {
		return false
	}
	tc, tp, rej := treeClaims(payload)
	if rej != nil {
		t.Fatalf("scanClaims accepted %q, the tree rejects it: %v", payload, rej)
	}
	if c != tc || present != tp {
		t.Fatalf("scanClaims(%q) = %+v, %b; the tree gives %+v, %b", payload, c, present, tc, tp)
	}
	return true
}
