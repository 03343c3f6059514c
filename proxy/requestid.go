package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"sync/atomic"
)

// RequestIDHeader carries the id of a request, from the client or made up
// by the proxy, in requests and responses.
const RequestIDHeader = "X-Request-Id"

// RequestIDs makes up request ids: a random prefix drawn once and a
// counter, cheaper than random bytes per request (ids are for correlating
// log lines, not secrets). It is safe for concurrent use.
type RequestIDs struct {
	prefix string
	seq    atomic.Uint64
}

// NewRequestIDs returns a generator with a fresh random prefix, so that
// ids of different generators and processes do not collide.
func NewRequestIDs() *RequestIDs {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return &RequestIDs{prefix: hex.EncodeToString(b[:])}
}

// Next returns a new id.
func (g *RequestIDs) Next() string {
	return g.prefix + "-" + strconv.FormatUint(g.seq.Add(1), 36)
}

// ValidRequestID accepts ids of 1 to 128 characters from a conservative
// set, so that a client's id can go into logs and headers unchanged.
func ValidRequestID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-', c == '_', c == '.', c == ':', c == '/', c == '+', c == '=', c == '@':
		default:
			return false
		}
	}
	return true
}
