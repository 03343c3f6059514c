package s3blobs_test

import (
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs/blobstest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs/s3blobs"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/s3test"
)

// TestSuite runs the shared blobs suite on a real S3 server, with and
// without a key prefix; the large blob crosses two multipart parts.
func TestSuite(t *testing.T) {
	for _, prefix := range []string{"", "exports/prod/"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			blobstest.Run(t, func(t *testing.T) exporter.Blobs {
				return s3test.New(t, prefix)
			}, blobstest.Options{Large: 2*s3blobs.PartSize + 12345})
		})
	}
}
