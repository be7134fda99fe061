package secrets

import "testing"

// FakeVault exposes the in-test fake Vault (fakevault_test.go) to the external tests, which
// run credentials through a whole job (package secrets_test imports internal/tasks).
type FakeVault struct{ f *fakeVault }

func NewFakeVault(t *testing.T) *FakeVault { return &FakeVault{newFakeVault(t)} }

func (v *FakeVault) URL() string                               { return v.f.srv.URL }
func (v *FakeVault) Close()                                    { v.f.srv.Close() }
func (v *FakeVault) AddToken(tok string)                       { v.f.addToken(tok, 0, false) }
func (v *FakeVault) Put(mountPath string, data map[string]any) { v.f.put(mountPath, data) }
func (v *FakeVault) Remove(mountPath string)                   { v.f.remove(mountPath) }
func (v *FakeVault) FailWith(status int) {
	v.f.mu.Lock()
	defer v.f.mu.Unlock()
	v.f.status = status
}
func (v *FakeVault) AppRole(roleID, secretID string) {
	v.f.mu.Lock()
	defer v.f.mu.Unlock()
	v.f.roleID, v.f.secretID, v.f.loginTTL = roleID, secretID, 3600
}

// FakeAWS exposes the in-test fake Secrets Manager (fakeaws_test.go) to the external tests.
type FakeAWS struct{ f *fakeAWS }

// NewFakeAWS starts the fake and points the standard AWS chain at it (t.Setenv: the test
// cannot be parallel).
func NewFakeAWS(t *testing.T) *FakeAWS {
	f := newFakeAWS(t)
	setAWSEnv(t, f.srv.URL, nil)
	return &FakeAWS{f}
}

const (
	FakeAWSRegion    = fakeRegion
	FakeAWSAccessKey = fakeAccessKey
)

func (a *FakeAWS) Close()                           { a.f.srv.Close() }
func (a *FakeAWS) Put(id, value string)             { a.f.put(id, value) }
func (a *FakeAWS) FailWith(status int, code string) { a.f.failWith(status, code, 0) }
