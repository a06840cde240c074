package job

import (
	"encoding/json"
	"time"

	"github.com/ferry-project/ferry/internal/store"
)

// Job is a job as users see it (the API's job resource).
type Job struct {
	ID              string          `json:"id"`
	Kind            string          `json:"kind"`
	State           string          `json:"state"`
	Steps           []string        `json:"steps,omitempty"`
	Progress        *Progress       `json:"progress,omitempty"`
	Args            json.RawMessage `json:"args,omitempty"`
	Result          json.RawMessage `json:"result,omitempty"`
	Error           string          `json:"error,omitempty"`
	ErrorCode       string          `json:"error_code,omitempty"`
	Attempt         int64           `json:"attempt"`
	CancelRequested bool            `json:"cancel_requested,omitempty"`
	MayCancel       bool            `json:"may_cancel"`
	Owner           string          `json:"owner,omitempty"`
	CreatedBy       string          `json:"created_by,omitempty"`
	Created         time.Time       `json:"created"`
	Updated         time.Time       `json:"updated"`
}

func (m *Manager) view(j store.Job) Job {
	v := Job{ID: j.ID, Kind: j.Kind, State: j.State, Args: j.Args, Result: j.Result, Error: j.Error, ErrorCode: j.ErrorCode,
		Attempt: j.Attempt, CancelRequested: j.CancelRequested, Owner: j.LeaseOwner, CreatedBy: j.CreatedBy,
		Created: j.Created, Updated: j.Updated, MayCancel: !store.JobTerminal(j.State) && !j.CancelRequested}
	if r, err := m.reg.lookup(j.Kind); err == nil {
		v.Steps = r.stepNames()
	}
	if len(j.Progress) > 0 {
		var p Progress
		if json.Unmarshal(j.Progress, &p) == nil {
			v.Progress = &p
		}
	}
	return v
}
