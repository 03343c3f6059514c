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

// requestIDPrefix makes ids unique across processes; requestSeq within one.
var (
	requestIDPrefix = func() string {
		var b [6]byte
		if _, err := rand.Read(b[:]); err != nil {
			panic("crypto/rand failed: " + err.Error())
		}
		return hex.EncodeToString(b[:])
	}()
	requestSeq atomic.Uint64
)

// NewRequestID returns a process-unique request id: a random prefix drawn
// at start and a counter (cheaper than random bytes per request; ids are
// for correlation, not secrets).
func NewRequestID() string {
	return requestIDPrefix + "-" + strconv.FormatUint(requestSeq.Add(1), 36)
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
