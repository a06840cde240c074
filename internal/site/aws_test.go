package site_test

import (
	"net/http/httptest"
	"testing"

	"github.com/ferry-project/ferry/internal/lab/awslab"
	"github.com/ferry-project/ferry/internal/provider"
	"github.com/ferry-project/ferry/internal/site"
)

// TestAWSSiteAgainstLab registers a lab region as a site of kind aws:
// wrong keys fail the site test, the right ones pass and refresh.
func TestAWSSiteAgainstLab(t *testing.T) {
	srv, err := awslab.New(t.Context(), awslab.Options{Dir: t.TempDir(), AccessKey: "AKIDFERRYLABTEST01", SecretKey: "labsecret", Region: "eu-west-1"})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Close() })

	var key site.Key
	m, _ := newManager(t, t.TempDir(), key)
	add := func(secret string) {
		t.Helper()
		if _, err := m.Add(t.Context(), site.AddRequest{Name: "aws-eu", Kind: "aws", Endpoint: hs.URL,
			Settings: map[string]string{"region": "eu-west-1"},
			Secrets:  map[string]site.Secret{"access_key_id": "AKIDFERRYLABTEST01", "secret_access_key": site.Secret(secret)}}); err != nil {
			t.Fatal(err)
		}
	}
	add("wrong")
	if _, err := m.Test(t.Context(), "aws-eu"); err == nil {
		t.Fatal("wrong keys passed the site test")
	}
	if err := m.Remove(t.Context(), "aws-eu"); err != nil {
		t.Fatal(err)
	}
	add("labsecret")
	tr, err := m.Test(t.Context(), "aws-eu")
	if err != nil || tr.Info.Kind != provider.KindAWS || tr.Info.Region != "eu-west-1" {
		t.Fatalf("site test: %+v %v", tr, err)
	}
	if _, err := m.Refresh(t.Context(), "aws-eu"); err != nil {
		t.Fatal(err)
	}
}
