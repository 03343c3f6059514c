package exporter

import (
	"context"
	"sync"
	"time"
)

// Queue is a snapshot of the jobs waiting and running, for estimates of
// when a job starts or ends (the status answer's Retry-After).
type Queue struct {
	// Queued are the queued jobs, oldest first: the order the dispatcher
	// starts them in.
	Queued []*Job
	// Running are the running jobs.
	Running []*Job
	// Slots is the number of jobs run at once (Options.MaxJobs).
	Slots int
	// At is when the snapshot was read.
	At time.Time
}

// Position returns the 0-based place of job id among the queued jobs, or
// -1 when it is not queued.
func (q *Queue) Position(id string) int {
	for i, j := range q.Queued {
		if j.ID == id {
			return i
		}
	}
	return -1
}

// queueTTL is how long a Queue snapshot is reused: status polls of many
// jobs share one read of the store.
const queueTTL = time.Second

// queueCache holds the last Queue snapshot.
type queueCache struct {
	mu   sync.Mutex
	snap *Queue
}

// Queue returns a snapshot of the queued and running jobs, at most about a
// second old. Jobs in the snapshot are shared: callers must not change them.
func (s *Service) Queue(ctx context.Context) (*Queue, error) {
	s.queue.mu.Lock()
	defer s.queue.mu.Unlock()
	now := s.opts.Now()
	if q := s.queue.snap; q != nil && now.Sub(q.At) < queueTTL && !now.Before(q.At) {
		return q, nil
	}
	jobs, err := s.opts.Store.List(ctx, StateQueued, StateRunning)
	if err != nil {
		return nil, err
	}
	q := &Queue{Slots: s.opts.MaxJobs, At: now}
	for _, j := range jobs {
		if j.Deleted {
			continue
		}
		if j.State == StateQueued {
			q.Queued = append(q.Queued, j)
		} else {
			q.Running = append(q.Running, j)
		}
	}
	s.queue.snap = q
	return q, nil
}

// RunningHere returns the number of jobs this replica drives now.
func (s *Service) RunningHere() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.running {
		if r.driver {
			n++
		}
	}
	return n
}
