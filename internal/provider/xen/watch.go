package xen

import (
	"context"
	"fmt"
	"time"

	"github.com/ferry-project/ferry/internal/core"
	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/xapi"
)

// watchWait is how long one event.from call waits for a change.
const watchWait = 30 * time.Second

// Watch follows event.from on class vm and calls fn with every VM that is
// added or changes, starting with every VM as it is now. A VM removed is
// reported with its ID and PowerState Unknown. It returns ctx's error when
// ctx is done, or fn's error.
func (p *Provider) Watch(ctx context.Context, fn func(core.VM) error) error {
	token := ""
	for {
		b, err := p.c.EventFrom(ctx, []string{"vm"}, token, watchWait)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("xen: watch: %w", ctx.Err())
			}
			if xapi.HasCode(err, "EVENTS_LOST") {
				token = "" // start again from the current state
				continue
			}
			return fmt.Errorf("xen: watch: %w", err)
		}
		token = b.Token
		var inv *inventory
		for _, ev := range b.Events {
			if ev.Operation == "del" {
				if ev.ObjUUID == "" {
					continue
				}
				if err := fn(core.VM{Site: p.info.Name, ID: core.VMID(ev.ObjUUID), PowerState: core.Unknown, Disks: []core.Disk{}}); err != nil {
					return err
				}
				continue
			}
			var rec xapi.VMRecord
			if err := ev.Decode(&rec); err != nil || rec.UUID == "" {
				// No usable snapshot: read the record.
				r, gerr := p.c.VM().GetRecord(ctx, xapi.VMRef(ev.Ref))
				if gerr != nil {
					if errs.Is(gerr, errs.NotFound) {
						continue // gone since
					}
					return fmt.Errorf("xen: watch: %w", gerr)
				}
				rec = r
			}
			if !isVM(&rec) {
				continue
			}
			if inv == nil {
				if inv, err = p.readInventory(ctx); err != nil {
					if ctx.Err() != nil {
						return fmt.Errorf("xen: watch: %w", ctx.Err())
					}
					return fmt.Errorf("xen: watch: %w", err)
				}
			}
			if err := fn(p.toVM(&rec, inv)); err != nil {
				return err
			}
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("xen: watch: %w", err)
		}
	}
}
