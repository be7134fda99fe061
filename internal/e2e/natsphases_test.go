package e2e

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// natsPhases runs jobs one at a time, as latency does, with this process subscribed to the
// subjects the control plane, the worker and JetStream talk on, so that every step of a job
// is seen on one clock as the NATS server routes it. Per job, from the first message of each
// kind after the submit:
//
//	submit→record     the submit request until the job's record is written ($KV.castellan_jobs)
//	record→publish    the record's write acknowledged, the envelope published
//	publish→delivered JetStream delivering it to the worker's waiting pull
//	delivered→claim   the worker checking the envelope and claiming it
//	claim→grant       the dispatcher granting the attempt (a compare-and-set on the record)
//	grant→result      the worker verifying the approval, running the task, publishing the result
//	  (worker-overhead is grant→result less the task's recorded run)
//	result→puback     the result stored, as the worker waits for it before it acks
//	result→recorded   the dispatcher consuming the result and writing the record
//	recorded→wait     the wait noticing the write (the job bucket's watch) and answering
//
// and the counts per job: messages on those subjects, JetStream API requests (reads of KV
// records included), writes of the job's record. One job's sequence is written to stderr.
func natsPhases(b *testing.B, h *procs, one func(*testing.B) (t0, ts, t1 time.Time, j api.Job)) {
	nc, err := nats.Connect(h.natsURL, nats.Name("bench-observer"))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	var mu sync.Mutex
	var seen []observed
	for _, subj := range []string{"$KV.>", "castellan.>", "$JS.ACK.>", "$JS.API.>", "_INBOX.>", natsq.WorkerInboxPrefix(pool) + ".>"} {
		if _, err := nc.Subscribe(subj, func(m *nats.Msg) {
			now := time.Now()
			mu.Lock()
			seen = append(seen, observed{at: now, subj: m.Subject, reply: m.Reply})
			mu.Unlock()
		}); err != nil {
			b.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	type run struct {
		t0, ts, t1 time.Time
		task       time.Duration
		events     []observed
	}
	var runs []run
	// A job's messages are those until the next job's submit: its acknowledgement may come
	// after the wait returned.
	take := func() []observed {
		_ = nc.Flush()
		mu.Lock()
		defer mu.Unlock()
		out := seen
		seen = nil
		return out
	}
	take()
	for b.Loop() {
		if len(runs) > 0 {
			runs[len(runs)-1].events = take()
		}
		t0, ts, t1, j := one(b)
		runs = append(runs, run{t0: t0, ts: ts, t1: t1, task: time.Duration(j.DurationMS) * time.Millisecond})
	}
	b.StopTimer()
	runs[len(runs)-1].events = take()

	phases := map[string][]time.Duration{}
	counts := map[string][]time.Duration{} // counts as durations, to reuse reportMedian's sort
	var example string
	for i, r := range runs {
		ev := classify(r.events)
		first := func(kind string, after time.Time) time.Time {
			for _, e := range ev {
				if e.kind == kind && !e.at.Before(after) {
					return e.at
				}
			}
			return time.Time{}
		}
		rec := first("kv-write:castellan_jobs", r.t0)
		pub := first("publish:castellan.jobs", rec)
		del := first("delivery:"+natsq.JobsStream(pool), pub)
		claim := first("request:castellan.claims", del)
		grant := first("reply:castellan.claims", claim)
		res := first("publish:castellan.results", grant)
		puback := first("reply:castellan.results", res)
		recorded := first("kv-write:castellan_jobs", res)
		steps := []struct {
			name     string
			from, to time.Time
		}{
			{"submit-record", r.t0, rec}, {"record-publish", rec, pub}, {"publish-submitted", pub, r.ts},
			{"publish-delivered", pub, del}, {"delivered-claim", del, claim}, {"claim-grant", claim, grant},
			{"grant-result", grant, res}, {"result-puback", res, puback}, {"result-recorded", res, recorded},
			{"recorded-wait", recorded, r.t1},
		}
		for _, s := range steps {
			if !s.from.IsZero() && !s.to.IsZero() {
				phases[s.name] = append(phases[s.name], s.to.Sub(s.from))
			}
		}
		if !grant.IsZero() && !res.IsZero() {
			phases["worker-overhead"] = append(phases["worker-overhead"], res.Sub(grant)-r.task)
		}
		var msgs, jsAPI, writes, reads time.Duration
		for _, e := range ev {
			msgs++
			switch {
			case strings.HasPrefix(e.kind, "api:") || strings.HasPrefix(e.kind, "get:"):
				jsAPI++
				if strings.HasPrefix(e.kind, "get:") {
					reads++
				}
			case e.kind == "kv-write:castellan_jobs":
				writes++
			}
		}
		counts["msgs"] = append(counts["msgs"], msgs)
		counts["js-api"] = append(counts["js-api"], jsAPI)
		counts["kv-reads"] = append(counts["kv-reads"], reads)
		counts["job-writes"] = append(counts["job-writes"], writes)
		if i == len(runs)/2 {
			var sb strings.Builder
			for _, e := range ev {
				fmt.Fprintf(&sb, "\n  %8.3f ms  %-40s %s", float64(e.at.Sub(r.t0).Microseconds())/1000, e.kind, e.subj)
			}
			fmt.Fprintf(&sb, "\n  %8.3f ms  wait returned (task ran %s)", float64(r.t1.Sub(r.t0).Microseconds())/1000, r.task)
			example = sb.String()
		}
	}
	for name, ds := range phases {
		reportMedian(b, name, ds)
	}
	for name, ns := range counts {
		slices.Sort(ns)
		b.ReportMetric(float64(ns[len(ns)/2]), name+"/job")
	}
	// To stderr: a benchmark's log is cut to a few lines.
	fmt.Fprintf(os.Stderr, "%s: the messages of one job (the middle one), from its submit:%s\n", b.Name(), example)
}

type observed struct {
	at          time.Time
	subj, reply string
	kind        string
}

// classify names each message's kind: what it is in the protocol, and for a reply the kind
// of request it answers (matched by the reply subject).
func classify(ev []observed) []observed {
	asked := map[string]string{} // reply subject -> the request's kind
	out := make([]observed, 0, len(ev))
	for _, e := range ev {
		tok := strings.Split(e.subj, ".")
		switch {
		case strings.HasPrefix(e.reply, "$JS.ACK."):
			// A message JetStream delivers to a consumer, named by its stream.
			e.kind = "delivery:" + strings.Split(e.reply, ".")[2]
		case strings.HasPrefix(e.subj, "$JS.ACK."):
			e.kind = "ack:" + tok[2]
		case strings.HasPrefix(e.subj, "$JS.API.DIRECT.GET.") && len(tok) > 4:
			e.kind = "get:" + tok[4]
		case strings.HasPrefix(e.subj, "$JS.API.") && len(tok) > 3:
			e.kind = "api:" + tok[2] + "." + tok[3]
		case strings.HasPrefix(e.subj, "$KV.") && len(tok) > 2:
			e.kind = "kv-write:" + tok[1]
		case strings.HasPrefix(e.subj, "castellan.") && len(tok) > 1:
			e.kind = "publish:castellan." + tok[1]
			if tok[1] == "claims" || tok[1] == "catalog" {
				e.kind = "request:castellan." + tok[1]
			}
		case asked[e.subj] != "":
			k := asked[e.subj]
			_, what, _ := strings.Cut(k, ":")
			e.kind = "reply:" + what
			delete(asked, e.subj)
		default:
			e.kind = "other:" + tok[0]
		}
		if e.reply != "" && !strings.HasPrefix(e.reply, "$JS.ACK.") {
			asked[e.reply] = e.kind
		}
		out = append(out, e)
	}
	return out
}
