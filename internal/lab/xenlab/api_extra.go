package xenlab

import (
	"net/http"
)

// vmImport is VM.import(url, sr, full_restore, force): the lab fetches the
// XVA at url (HTTP GET) and imports it as PUT /import does.
func (s *Server) vmImport(c *call) (any, error) {
	url, sr := c.args[0].(string), c.args[1].(string)
	s.mu.Lock()
	_, err := s.db.get("SR", sr)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(c.ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, apiErr(errImportError, "invalid URL: "+err.Error())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, apiErr(errImportError, "fetch "+url+": "+err.Error())
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, apiErr(errImportError, "fetch "+url+": "+resp.Status)
	}
	ref, err := s.importXVA(c.ctx, resp.Body, sr, resp.ContentLength, c.progress)
	if err != nil {
		return nil, err
	}
	return []any{ref}, nil
}

// vmMigrateSend is VM.migrate_send within the lab's pool: every host sees
// the same SR and networks, so the VM stays where its disks are; the maps
// are checked and the VM's reference returned.
func (s *Server) vmMigrateSend(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	for k, v := range c.args[3].(map[string]any) {
		if _, err := s.db.get("VDI", k); err != nil {
			return nil, err
		}
		if _, err := s.db.get("SR", v.(string)); err != nil {
			return nil, err
		}
	}
	for k, v := range c.args[4].(map[string]any) {
		if _, err := s.db.get("VIF", k); err != nil {
			return nil, err
		}
		if _, err := s.db.get("network", v.(string)); err != nil {
			return nil, err
		}
	}
	return vm.Ref, nil
}

// vmDataSources lists the VM's data sources: memory and VCPUs, the ones
// the lab can tell.
func (s *Server) vmDataSources(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	mem := 0.0
	if vm.str("power_state") == "Running" {
		mem = float64(vm.int("memory_static_max"))
	}
	return []any{
		map[string]any{"name_label": "memory", "name_description": "Memory currently allocated to VM", "enabled": true, "standard": true,
			"min": 0.0, "max": float64(vm.int("memory_static_max")), "units": "B", "value": mem},
	}, nil
}

// vmQueryDataSource returns a data source's value; sources the lab does
// not measure read as NaN, which xapi's JSON carries as the string "NaN".
func (s *Server) vmQueryDataSource(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, err := s.db.get("VM", c.args[0].(string))
	if err != nil {
		return nil, err
	}
	if c.args[1].(string) == "memory" && vm.str("power_state") == "Running" {
		return float64(vm.int("memory_static_max")), nil
	}
	return "NaN", nil
}

// vmWLB answers VM.retrieve_wlb_recommendations without a WLB server:
// every host, with no recommendation.
func (s *Server) vmWLB(c *call) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.db.get("VM", c.args[0].(string)); err != nil {
		return nil, err
	}
	out := map[string]any{}
	for _, h := range s.db.all("host") {
		out[h.Ref] = []any{h.str("name_label")}
	}
	return out, nil
}
