// Package deploy holds the deployment examples of fhir-bulk-proxy, run from
// the image built by the repository's Dockerfile: a compose file
// (compose.yaml) and Kubernetes manifests (kubernetes.yaml) that run the proxy
// as a sidecar of a FHIR server, and their replicated variants
// (compose-replicated.yaml, kubernetes-replicated.yaml) that run several
// proxies on PostgreSQL and S3. It has no code of its own: its tests parse the
// Dockerfile and the manifests, check that they agree with each other and with
// the proxy's configuration, and run the Dockerfile's go build.
package deploy
