// A Temporal worker (Go SDK go.temporal.io/sdk) that polls through flowgate with a credential
// that flowgate minted, and keeps it fresh. It serves DeployWorkflow (workflow.go) and its
// activity RunDeploy (activities.go), which the pipelines in deploy/ci start.
//
//	go build -o worker . && ./worker
//
// Two ways to run it:
//
//   - Through a local `flowgate sidecar` (the simpler one). The sidecar obtains the credential,
//     refreshes it and adds it to every call; the worker talks plaintext to 127.0.0.1 and never
//     sees a token:
//
//     flowgate sidecar --config sidecar.toml &
//     FLOWGATE_SIDECAR=127.0.0.1:7233 ./worker
//
//   - Directly, over TLS to the gateway. The worker exchanges a subject token once (a CI OIDC
//     token from $CI_OIDC_TOKEN, or a Kubernetes projected service-account token from
//     $FLOWGATE_SUBJECT_TOKEN_FILE) and then re-exchanges its own credential at about 2/3 of
//     its lifetime. client.NewAPIKeyDynamicCredentials calls back on every request, so each
//     call carries whatever credential is current ("authorization: Bearer <credential>"):
//
//     CI_OIDC_TOKEN=... FLOWGATE_URL=https://flowgate.example.com \
//     TEMPORAL_ADDRESS=flowgate.example.com:7233 ./worker
//
// The same can be done with client.Options.HeadersProvider: a type whose
// GetHeaders(ctx) (map[string]string, error) returns {"authorization": "Bearer " + current}.
//
// Other settings: TEMPORAL_NAMESPACE (payments) and TEMPORAL_TASK_QUEUE (deploys) say what it
// serves; FLOWGATE_SCOPE (namespace:<ns> role:worker task_queue:<queue>) is what it asks for,
// and a Cedar policy on Temporal::Action::"IssueCredential" must permit it (see
// deploy/ci/README.md); FLOWGATE_CA_FILE is a PEM bundle for a gateway whose certificate a
// private CA signed (the system roots otherwise).
//
// The subject token goes to the gateway only. The token endpoint comes from the discovery
// document at FLOWGATE_URL and must be on FLOWGATE_URL's https origin (scheme, host and port):
// anything else stops the worker (exit 2). No redirect is followed, and a request to the
// gateway is given up after 10 s or 256 KiB of response.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net/url"
	"os"
	"strings"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
)

// settings is the worker's configuration, all of it from the environment.
type settings struct {
	sidecar   string // FLOWGATE_SIDECAR: a local sidecar's plaintext address
	gateway   string // FLOWGATE_URL: where the token endpoint is discovered
	address   string // TEMPORAL_ADDRESS: the gateway's gRPC address
	namespace string
	taskQueue string
	scope     string
	caFile    string
	ciToken   string // CI_OIDC_TOKEN, taken out of the environment
	tokenFile string // FLOWGATE_SUBJECT_TOKEN_FILE
}

func getenv(name, fallback string) string {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	return fallback
}

// loadSettings reads the environment and says in one line what is missing, before anything
// goes over the network.
func loadSettings() (settings, error) {
	s := settings{
		sidecar:   getenv("FLOWGATE_SIDECAR", ""),
		gateway:   strings.TrimRight(getenv("FLOWGATE_URL", ""), "/"),
		address:   getenv("TEMPORAL_ADDRESS", ""),
		namespace: getenv("TEMPORAL_NAMESPACE", "payments"),
		taskQueue: getenv("TEMPORAL_TASK_QUEUE", "deploys"),
		caFile:    getenv("FLOWGATE_CA_FILE", ""),
		ciToken:   strings.TrimSpace(os.Getenv("CI_OIDC_TOKEN")),
		tokenFile: getenv("FLOWGATE_SUBJECT_TOKEN_FILE", ""),
	}
	// Single-use: keep the CI token out of child processes.
	os.Unsetenv("CI_OIDC_TOKEN")
	s.scope = getenv("FLOWGATE_SCOPE", fmt.Sprintf("namespace:%s role:worker task_queue:%s", s.namespace, s.taskQueue))
	if s.sidecar != "" {
		return s, nil
	}
	if s.ciToken == "" && s.tokenFile == "" {
		return s, fmt.Errorf("no credential source: set FLOWGATE_SIDECAR (a local flowgate sidecar, e.g. 127.0.0.1:7233), "+
			"or CI_OIDC_TOKEN or FLOWGATE_SUBJECT_TOKEN_FILE (a token to exchange) with FLOWGATE_URL "+
			"(the gateway, e.g. https://flowgate.example.com) and TEMPORAL_ADDRESS (its gRPC address, "+
			"e.g. flowgate.example.com:7233); the credential asked for is `%s` (FLOWGATE_SCOPE)", s.scope)
	}
	var missing []string
	if s.gateway == "" {
		missing = append(missing, "FLOWGATE_URL (the gateway, e.g. https://flowgate.example.com)")
	}
	if s.address == "" {
		missing = append(missing, "TEMPORAL_ADDRESS (the gateway's gRPC address, e.g. flowgate.example.com:7233)")
	}
	if len(missing) > 0 {
		return s, fmt.Errorf("set %s to exchange the subject token for `%s`", strings.Join(missing, " and "), s.scope)
	}
	// The subject token and the credential are bearer tokens: never send them in the clear.
	if u, err := url.Parse(s.gateway); err != nil || u.Scheme != "https" || u.Host == "" {
		return s, fmt.Errorf("FLOWGATE_URL must be an https:// URL, not %q", s.gateway)
	}
	return s, nil
}

// tlsConfig trusts FLOWGATE_CA_FILE when it is set, the system roots otherwise.
func tlsConfig(caFile string) (*tls.Config, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return config, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("cannot read FLOWGATE_CA_FILE: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("FLOWGATE_CA_FILE %s holds no PEM certificate", caFile)
	}
	config.RootCAs = pool
	return config, nil
}

// fail prints one line and exits: a supervisor's log shows what to fix, not a stack.
func fail(code int, err error) {
	fmt.Fprintln(os.Stderr, "worker:", err)
	os.Exit(code)
}

func main() {
	s, err := loadSettings()
	if err != nil {
		fail(2, err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()

	options := client.Options{Namespace: s.namespace}
	refreshFailed := make(chan error, 1)

	if s.sidecar != "" {
		// The sidecar adds the credential and talks TLS to the gateway; the local hop is
		// plaintext h2c on loopback.
		options.HostPort = s.sidecar
	} else {
		tc, err := tlsConfig(s.caFile)
		if err != nil {
			fail(2, err)
		}
		subject, err := subjectToken(s)
		if err != nil {
			fail(2, err)
		}
		hc := newHTTPClient(tc.Clone())
		endpoint, err := discover(ctx, hc, s.gateway)
		var wrong *configError
		if errors.As(err, &wrong) {
			fail(2, err)
		} else if err != nil {
			fail(1, err)
		}
		creds := &credentials{endpoint: endpoint, scope: s.scope, http: hc}
		if err := creds.exchange(ctx, subject); err != nil {
			fail(1, err)
		}
		go func() {
			if err := creds.keepFresh(ctx, s); err != nil {
				refreshFailed <- err
			}
		}()

		options.HostPort = s.address
		options.Credentials = client.NewAPIKeyDynamicCredentials(creds.current)
		options.ConnectionOptions = client.ConnectionOptions{TLS: tc}
	}

	c, err := client.Dial(options)
	if err != nil {
		fail(1, fmt.Errorf("cannot connect to %s: %w", options.HostPort, err))
	}
	defer c.Close()

	w := worker.New(c, s.taskQueue, worker.Options{})
	w.RegisterWorkflow(DeployWorkflow)
	w.RegisterActivity(RunDeploy)

	// Stop on SIGINT/SIGTERM, or when the credential can no longer be refreshed (then exit
	// non-zero, so that a supervisor restarts the worker with a new subject token).
	interrupt := make(chan interface{})
	var fatal error
	go func() {
		select {
		case sig := <-worker.InterruptCh():
			log.Printf("received %v, stopping", sig)
		case fatal = <-refreshFailed:
			log.Printf("stopping: %v", fatal)
		}
		close(interrupt)
	}()
	if err := w.Run(interrupt); err != nil {
		c.Close()
		fail(1, err)
	}
	if fatal != nil {
		c.Close()
		fail(1, fatal)
	}
}
