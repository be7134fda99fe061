package controlplane

import (
	"bytes"
	"net/http"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// workerRoutes are the HTTP worker routes, served over a backend that implements Workers.
type workerRoutes struct {
	s *Server
	b Workers
}

// MaxWorkerName bounds a worker's registered name, in bytes.
const MaxWorkerName = 128

func (wr workerRoutes) register(w http.ResponseWriter, r *http.Request, p Principal) error {
	var req api.RegisterRequest
	if err := Decode(w, r, smallBody, &req, false); err != nil {
		return err
	}
	if req.Name == "" || len(req.Name) > MaxWorkerName {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "name is required, at most %d bytes", MaxWorkerName)
	}
	if len(req.AgentVersion) > 64 {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "agent_version is over 64 bytes")
	}
	resp, err := wr.b.Register(r.Context(), p, req)
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, resp)
	return nil
}

func (wr workerRoutes) publishCatalog(w http.ResponseWriter, r *http.Request, p Principal) error {
	var req api.CatalogRequest
	if err := Decode(w, r, catalogBody, &req, false); err != nil {
		return err
	}
	resp, err := wr.b.PublishCatalog(r.Context(), p, req)
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, resp)
	return nil
}

func (wr workerRoutes) lease(w http.ResponseWriter, r *http.Request, p Principal) error {
	var req api.LeaseRequest
	if err := Decode(w, r, smallBody, &req, false); err != nil {
		return err
	}
	if req.Max < 1 || req.Max > api.MaxLeaseBatch {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "max is %d, want 1..%d (how many jobs you have free slots for)", req.Max, api.MaxLeaseBatch)
	}
	wait := api.DefaultWaitSeconds
	if req.WaitSeconds != nil {
		wait = *req.WaitSeconds
	}
	if wait < 0 || wait > api.MaxWaitSeconds {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "wait_seconds is %d, want 0..%d", wait, api.MaxWaitSeconds)
	}
	ctx := r.Context()
	if err := wr.b.Registered(ctx, p); err != nil {
		return err
	}
	deadline := time.NewTimer(time.Duration(wait) * time.Second)
	defer deadline.Stop()
	recheck := time.NewTicker(wr.s.cfg.RecheckInterval)
	defer recheck.Stop()
	for {
		ch := wr.s.b.Next(WorkQueued, "")
		jobs, err := wr.b.LeaseOnce(ctx, p, req.Max)
		if err != nil {
			return err
		}
		if len(jobs) > 0 {
			api.WriteJSON(w, http.StatusOK, api.LeaseResponse{Jobs: jobs})
			return nil
		}
		again, err := wr.s.park(ctx, &wr.s.parked, ch, recheck.C, deadline.C)
		if err != nil && err != errShutdown {
			return err
		}
		if !again {
			api.WriteJSON(w, http.StatusOK, api.LeaseResponse{Jobs: []api.LeasedJob{}})
			return nil
		}
	}
}

func (wr workerRoutes) heartbeat(w http.ResponseWriter, r *http.Request, p Principal) error {
	if err := Decode(w, r, smallBody, &struct{}{}, true); err != nil {
		return err
	}
	tok := r.PathValue("token")
	if !strings.HasPrefix(tok, "lease_") || len(tok) > 64 {
		return LeaseLost()
	}
	resp, err := wr.b.Heartbeat(r.Context(), p, tok)
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, resp)
	return nil
}

// LeaseLost is the refusal of a heartbeat for a lease that is not the caller's any more.
func LeaseLost() error {
	return Refuse(http.StatusConflict, api.CodeLeaseLost, "this lease is no longer yours (expired, re-leased or finished): stop the job and do not complete it")
}

func (wr workerRoutes) complete(w http.ResponseWriter, r *http.Request, p Principal) error {
	var req api.CompleteRequest
	if err := Decode(w, r, int64(wr.s.cfg.MaxOutputBytes)+bodySlack+api.MaxErrorMessage, &req, false); err != nil {
		return err
	}
	code, retryable, err := CheckCompletion(req)
	if err != nil {
		return err
	}
	if err := CheckAuditHead(req.AuditHead); err != nil {
		return err
	}
	c := Completion{CompleteRequest: req, Code: code, Retryable: retryable}
	if len(req.Output) > 0 && string(bytes.TrimSpace(req.Output)) != "null" {
		c.Output = CompactJSON(req.Output)
		if len(c.Output) > wr.s.cfg.MaxOutputBytes {
			return Refuse(http.StatusRequestEntityTooLarge, api.CodeOutputTooLarge, "output is %d bytes, the cap is %d", len(c.Output), wr.s.cfg.MaxOutputBytes)
		}
	}
	resp, err := wr.b.Complete(r.Context(), p, r.PathValue("id"), c)
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, resp)
	return nil
}

// CheckAuditHead validates a reported audit head; nil is valid (the field is optional).
func CheckAuditHead(h *api.AuditHead) error {
	if h == nil {
		return nil
	}
	if h.Seq == 0 || len(h.Hash) != 64 || strings.Trim(h.Hash, "0123456789abcdef") != "" {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "audit_head: seq must be at least 1 and hash 64 lowercase hex digits")
	}
	return nil
}
