package xenlab

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestSchemaMatchesDatamodel checks schema.gen.go against xenapi.json:
// every field and message the lab knows has the datamodel's type.
func TestSchemaMatchesDatamodel(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(sharedXAPI(t), "xenapi.json"))
	if err != nil {
		t.Skip(err)
	}
	var dm []struct {
		Name   string `json:"name"`
		Fields []struct {
			Name, Type string
		} `json:"fields"`
		Messages []struct {
			Name   string `json:"name"`
			Params []struct {
				Name, Type string
			} `json:"params"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(b, &dm); err != nil {
		t.Fatal(err)
	}
	s := newSchema()
	for _, c := range dm {
		ci := s.classes[c.Name]
		if ci == nil {
			continue
		}
		for _, f := range c.Fields {
			if got := ci.fields[f.Name]; got == nil || got.Type != f.Type {
				t.Errorf("%s.%s: schema has %+v, datamodel type %s", c.Name, f.Name, got, f.Type)
			}
		}
		for _, m := range c.Messages {
			md := ci.messages[m.Name]
			if md == nil {
				continue // removed messages are left out
			}
			n := len(m.Params)
			if md.Session {
				n--
			}
			if n != len(md.Params) {
				t.Errorf("%s.%s: %d parameters, datamodel %d", c.Name, m.Name, len(md.Params), n)
			}
		}
		rec := ci.newRecord()
		if len(rec) == 0 {
			t.Errorf("%s: empty default record", c.Name)
		}
	}
}
