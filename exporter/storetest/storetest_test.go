package storetest_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter/storetest"
)

// memStore is a minimal in-memory exporter.Store: the suite's own check
// that it asks for nothing beyond the contract.
type memStore struct {
	mu    sync.Mutex
	jobs  map[string]*exporter.Job
	units map[string]map[int]exporter.Unit
}

func newMemStore() *memStore {
	return &memStore{jobs: map[string]*exporter.Job{}, units: map[string]map[int]exporter.Unit{}}
}

func (m *memStore) PutUnits(_ context.Context, jobID string, units []exporter.Unit) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.jobs[jobID]; !ok {
		return notFound("job " + jobID)
	}
	if m.units[jobID] == nil {
		m.units[jobID] = map[int]exporter.Unit{}
	}
	for _, u := range units {
		u.Values = append([]string(nil), u.Values...)
		m.units[jobID][u.ID] = u
	}
	return nil
}

func (m *memStore) Units(_ context.Context, jobID string) ([]exporter.Unit, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []exporter.Unit
	for _, u := range m.units[jobID] {
		u.Values = append([]string(nil), u.Values...)
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func notFound(what string) error {
	return &exporter.Error{Kind: exporter.ENOTFOUND, Message: what + " not found", Err: exporter.ErrNotFound}
}

func (m *memStore) Create(_ context.Context, job *exporter.Job) error {
	if job.ID == "" {
		return exporter.Errorf(exporter.EINVALID, "no id")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.jobs[job.ID]; ok {
		return exporter.Errorf(exporter.ECONFLICT, "exists")
	}
	m.jobs[job.ID] = job.Clone()
	return nil
}

func (m *memStore) Get(_ context.Context, id string) (*exporter.Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j, ok := m.jobs[id]
	if !ok {
		return nil, notFound("job")
	}
	return j.Clone(), nil
}

func (m *memStore) List(_ context.Context, states ...exporter.State) ([]*exporter.Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*exporter.Job
	for _, j := range m.jobs {
		if len(states) == 0 || slices.Contains(states, j.State) {
			out = append(out, j.Clone())
		}
	}
	slices.SortFunc(out, func(a, b *exporter.Job) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

func (m *memStore) change(id string, edit func(*exporter.Job) error) (*exporter.Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.jobs[id]
	if !ok {
		return nil, notFound("job")
	}
	j := old.Clone()
	if err := edit(j); err != nil {
		return nil, err
	}
	j = j.Clone()
	j.UpdatedAt = time.Now()
	if j.UpdatedAt.Before(old.UpdatedAt) {
		j.UpdatedAt = old.UpdatedAt
	}
	m.jobs[id] = j
	return j.Clone(), nil
}

func (m *memStore) Transition(_ context.Context, id string, from, to exporter.State, reason string, mutate func(*exporter.Job) error) (*exporter.Job, error) {
	if !exporter.CanTransition(from, to) {
		return nil, exporter.Errorf(exporter.EINVALID, "forbidden")
	}
	return m.change(id, func(j *exporter.Job) error {
		if j.State != from {
			return fmt.Errorf("job is %s: %w", j.State, exporter.ErrConflict)
		}
		if mutate != nil {
			if err := mutate(j); err != nil {
				return err
			}
		}
		// Ignore a State changed by mutate.
		j.State, j.Reason = to, reason
		return nil
	})
}

func (m *memStore) Update(_ context.Context, id string, mutate func(*exporter.Job) error) (*exporter.Job, error) {
	return m.change(id, func(j *exporter.Job) error {
		state := j.State
		if mutate != nil {
			if err := mutate(j); err != nil {
				return err
			}
		}
		if j.State != state {
			return exporter.Errorf(exporter.EINVALID, "state changed")
		}
		return nil
	})
}

func (m *memStore) Delete(_ context.Context, id string) error {
	m.mu.Lock()
	delete(m.units, id)
	m.mu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.jobs, id)
	return nil
}

func (m *memStore) FileJob(_ context.Context, fileID string) (*exporter.Job, exporter.File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, j := range m.jobs {
		for _, f := range j.Files {
			if f.ID == fileID {
				return j.Clone(), f, nil
			}
		}
	}
	return nil, exporter.File{}, notFound("file")
}

func (m *memStore) Close() error { return nil }

func TestMemStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) exporter.Store { return newMemStore() })
}
