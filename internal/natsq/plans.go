package natsq

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// PlansBucket holds the plan records of POST /v1/plans (internal/controlplane/plans.go):
//
//	p.<plan id>  the record (JSON), updated with compare-and-set
//	j.<job id>   the plan the job is a step of
//	k.<hash>     the plan an idempotency key made (SHA-256 of pool and key, hex)
//	active       the ids of the plans not ended (JSON), updated with compare-and-set: the
//	             layer reads it on every job change, so it is one direct get, not a key
//	             listing (which would create a consumer each time)
//
// The steps themselves are ordinary jobs in JobsBucket.
const PlansBucket = "castellan_plans"

func plansKV(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := ensureKV(ctx, js, jetstream.KeyValueConfig{Bucket: PlansBucket, Description: "Castellan plans", History: 1, Replicas: replicas})
	if err != nil {
		return nil, fmt.Errorf("natsq: create bucket %s: %w", PlansBucket, err)
	}
	return kv, nil
}

var _ controlplane.Plans = natsBackend{}

func planIdemKey(pool, key string) string {
	sum := sha256.Sum256([]byte(pool + "\x00" + key))
	return "k." + hex.EncodeToString(sum[:])
}

func (b natsBackend) CreatePlan(ctx context.Context, rec controlplane.PlanRecord) (controlplane.PlanRecord, bool, error) {
	kv := b.s.plans
	if rec.IdempotencyKey != "" {
		// The key is claimed first: of two submits with one key, one creates the plan, the
		// other reads it.
		if _, err := kv.Create(ctx, planIdemKey(rec.Pool, rec.IdempotencyKey), []byte(rec.ID)); errors.Is(err, jetstream.ErrKeyExists) {
			e, err := kv.Get(ctx, planIdemKey(rec.Pool, rec.IdempotencyKey))
			if err != nil {
				return controlplane.PlanRecord{}, false, err
			}
			old, err := b.Plan(ctx, string(e.Value()))
			if errors.Is(err, controlplane.ErrNoPlan) {
				// The other submit claimed the key and has not written its record yet.
				return controlplane.PlanRecord{}, false, controlplane.Refuse(http.StatusConflict, api.CodeIdempotency,
					"idempotency_key %q is being used by a plan submit in progress; retry", rec.IdempotencyKey)
			}
			if err != nil {
				return controlplane.PlanRecord{}, false, err
			}
			if !bytes.Equal(old.RequestHash, rec.RequestHash) {
				return controlplane.PlanRecord{}, false, controlplane.Refuse(http.StatusConflict, api.CodeIdempotency,
					"idempotency_key %q was already used in pool %q for a different plan (%s)", rec.IdempotencyKey, rec.Pool, old.ID)
			}
			return old, false, nil
		} else if err != nil {
			return controlplane.PlanRecord{}, false, err
		}
	}
	for _, id := range rec.Steps {
		if _, err := kv.Put(ctx, "j."+id, []byte(rec.ID)); err != nil {
			return controlplane.PlanRecord{}, false, err
		}
	}
	if err := b.setActive(ctx, func(ids []string) []string { return append(ids, rec.ID) }); err != nil {
		return controlplane.PlanRecord{}, false, err
	}
	v, _ := json.Marshal(rec)
	if _, err := kv.Create(ctx, "p."+rec.ID, v); err != nil {
		return controlplane.PlanRecord{}, false, err
	}
	return rec, true, nil
}

func (b natsBackend) plan(ctx context.Context, id string) (controlplane.PlanRecord, uint64, error) {
	e, err := b.s.plans.Get(ctx, "p."+id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return controlplane.PlanRecord{}, 0, controlplane.ErrNoPlan
	}
	if err != nil {
		return controlplane.PlanRecord{}, 0, err
	}
	var rec controlplane.PlanRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return controlplane.PlanRecord{}, 0, fmt.Errorf("natsq: plan %s: %w", id, err)
	}
	return rec, e.Revision(), nil
}

func (b natsBackend) Plan(ctx context.Context, id string) (controlplane.PlanRecord, error) {
	rec, _, err := b.plan(ctx, id)
	return rec, err
}

func (b natsBackend) PlanOfJob(ctx context.Context, jobID string) (string, error) {
	e, err := b.s.plans.Get(ctx, "j."+jobID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return string(e.Value()), nil
}

// update applies change to plan id with compare-and-set, retrying when another replica
// wrote in between.
func (b natsBackend) update(ctx context.Context, id string, change func(*controlplane.PlanRecord) error) (controlplane.PlanRecord, error) {
	for {
		rec, rev, err := b.plan(ctx, id)
		if err != nil {
			return rec, err
		}
		if err := change(&rec); err != nil {
			return rec, err
		}
		v, _ := json.Marshal(rec)
		_, err = b.s.plans.Update(ctx, "p."+id, v, rev)
		if casConflict(err) {
			continue
		}
		return rec, err
	}
}

func (b natsBackend) AttachPlanApproval(ctx context.Context, _ controlplane.Principal, id, token string) (controlplane.PlanRecord, error) {
	return b.update(ctx, id, func(rec *controlplane.PlanRecord) error {
		if rec.Approval != "" {
			return controlplane.Refuse(http.StatusConflict, api.CodeInvalidState, "plan %s already has an approval", id)
		}
		rec.Approval = token
		return nil
	})
}

// activeCache is the active list as this replica last saw it: from the plans bucket's watch
// of the key, or from its own write. The layer reads the list at every job change (three
// per job), so with the watch up those reads cost no round trip. Another replica's new plan
// is seen when the watch delivers it, a fraction of a millisecond after the write; that
// replica moves the plan on meanwhile, having its own write.
type activeCache struct {
	mu    sync.Mutex
	ready bool // the watch has delivered the key's value (or its absence)
	ids   []string
	rev   uint64
}

// offer keeps ids at revision rev unless a newer revision is held.
func (c *activeCache) offer(ids []string, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rev >= c.rev {
		c.ids, c.rev = slices.Clone(ids), rev
	}
}

func (c *activeCache) get() ([]string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ids), c.ready
}

func (c *activeCache) setReady(ready bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ready = ready
}

// watchActive keeps s.active until ctx ends; while it is not up, ActivePlans reads.
func (s *APIServer) watchActive(ctx context.Context) error {
	w, err := s.plans.Watch(ctx, "active")
	if err != nil {
		return fmt.Errorf("natsq: watch %s: %w", PlansBucket, err)
	}
	defer s.active.setReady(false)
	return follow(ctx, w, func(e jetstream.KeyValueEntry) {
		if e.Operation() != jetstream.KeyValuePut {
			s.active.offer(nil, e.Revision())
			return
		}
		var ids []string
		if err := json.Unmarshal(e.Value(), &ids); err != nil {
			s.active.setReady(false) // reads report it
			return
		}
		s.active.offer(ids, e.Revision())
	}, func() { s.active.setReady(true) }) // the current value (if any) is delivered
}

// active reads the active list and its revision (0: no such key yet).
func (b natsBackend) active(ctx context.Context) ([]string, uint64, error) {
	e, err := b.s.plans.Get(ctx, "active")
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	var ids []string
	if err := json.Unmarshal(e.Value(), &ids); err != nil {
		return nil, 0, fmt.Errorf("natsq: the active plans: %w", err)
	}
	return ids, e.Revision(), nil
}

// setActive changes the active list with compare-and-set, retrying when another replica
// wrote in between.
func (b natsBackend) setActive(ctx context.Context, change func([]string) []string) error {
	for {
		ids, rev, err := b.active(ctx)
		if err != nil {
			return err
		}
		ids = change(ids)
		v, _ := json.Marshal(ids)
		var newRev uint64
		if rev == 0 {
			newRev, err = b.s.plans.Create(ctx, "active", v)
		} else {
			newRev, err = b.s.plans.Update(ctx, "active", v, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || casConflict(err) {
			continue
		}
		if err == nil {
			b.s.active.offer(ids, newRev) // seen here at once, before the watch delivers it
		}
		return err
	}
}

func (b natsBackend) ActivePlans(ctx context.Context) ([]string, error) {
	if ids, ok := b.s.active.get(); ok {
		return ids, nil
	}
	ids, _, err := b.active(ctx)
	return ids, err
}

func (b natsBackend) EndPlan(ctx context.Context, id string) error {
	if _, err := b.update(ctx, id, func(rec *controlplane.PlanRecord) error { rec.Ended = true; return nil }); err != nil {
		return err
	}
	return b.setActive(ctx, func(ids []string) []string { return slices.DeleteFunc(ids, func(x string) bool { return x == id }) })
}
