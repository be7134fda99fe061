package server

import (
	"context"
	"fmt"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// qWorkerSeen records that a worker leased or heartbeated. It writes at most once per
// api.PresenceInterval per worker (?3 is now minus the interval): a parked long-poll
// re-queries every RecheckInterval, and a write per query would cost a page per second per
// idle worker for a time nobody needs to the millisecond.
var qWorkerSeen = hot(`UPDATE workers SET last_seen_at = ?1 WHERE token_id = ?2 AND last_seen_at <= ?1 - ` +
	fmt.Sprint(api.PresenceInterval.Milliseconds()))

// ListWorkers lists the registered workers of pool ("" for every pool), online ones first,
// then by pool and name, with the tasks of their published catalogs; online means seen
// within window of now.
func (s *Store) ListWorkers(ctx context.Context, pool string, window time.Duration, now time.Time) (api.WorkerList, error) {
	q := `SELECT token_id, pool, name, agent_version, registered_at, last_seen_at FROM workers`
	var args []any
	if pool != "" {
		q += ` WHERE pool = ?`
		args = append(args, pool)
	}
	rows, err := s.rdb.QueryContext(ctx, q, args...)
	if err != nil {
		return api.WorkerList{}, err
	}
	out := api.WorkerList{Workers: []api.WorkerInfo{}, OnlineWindowSeconds: int(window / time.Second)}
	idx := map[string]int{}
	for rows.Next() {
		var w api.WorkerInfo
		var reg, seen int64
		if err := rows.Scan(&w.ID, &w.Pool, &w.Name, &w.Version, &reg, &seen); err != nil {
			rows.Close()
			return api.WorkerList{}, err
		}
		r := msTime(reg)
		w.RegisteredAt, w.LastSeenAt = &r, msTime(seen)
		w.Online = now.Sub(w.LastSeenAt) < window
		w.Tasks = []string{}
		idx[w.ID] = len(out.Workers)
		out.Workers = append(out.Workers, w)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return api.WorkerList{}, err
	}
	trows, err := s.rdb.QueryContext(ctx, `SELECT token_id, name, version FROM worker_tasks ORDER BY name, version`)
	if err != nil {
		return api.WorkerList{}, err
	}
	defer trows.Close()
	for trows.Next() {
		var id, name, version string
		if err := trows.Scan(&id, &name, &version); err != nil {
			return api.WorkerList{}, err
		}
		if i, ok := idx[id]; ok {
			out.Workers[i].Tasks = append(out.Workers[i].Tasks, name+"@"+version)
		}
	}
	api.SortWorkers(out.Workers)
	return out, trows.Err()
}
