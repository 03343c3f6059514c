package exporter

import (
	"context"
	"sync/atomic"
)

// budgetKey is the context key of a retry budget.
type budgetKey struct{}

// WithRetryBudget returns a context whose upstream requests may be retried
// at most n times in all (a work unit's budget), on top of each request's
// own retry limit.
func WithRetryBudget(ctx context.Context, n int64) context.Context {
	b := new(atomic.Int64)
	b.Store(n)
	return context.WithValue(ctx, budgetKey{}, b)
}

// TakeRetry spends one retry of the context's budget and reports whether
// one was left. A context without a budget always allows the retry.
// Upstream implementations call it before every retry.
func TakeRetry(ctx context.Context) bool {
	b, ok := ctx.Value(budgetKey{}).(*atomic.Int64)
	if !ok {
		return true
	}
	return b.Add(-1) >= 0
}
