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
