// A Temporal worker (Go SDK go.temporal.io/sdk) that polls through flowgate with a credential
// that flowgate minted, and keeps it fresh.
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
//     call carries whatever credential is current ("authorization: Bearer <credential>").
//
// The same can be done with client.Options.HeadersProvider: a type whose
// GetHeaders(ctx) (map[string]string, error) returns {"authorization": "Bearer " + current}.
//
// The credential's scope (namespace:payments role:worker task_queue:deploys) must be permitted
// by a Cedar policy on Temporal::Action::"IssueCredential" (see deploy/ci/README.md).
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	// Your workflows and activities.
	"acme.example/payments/deploys"
)

const (
	namespace    = "payments"
	taskQueue    = "deploys"
	scope        = "namespace:payments role:worker task_queue:deploys"
	grantType    = "urn:ietf:params:oauth:grant-type:token-exchange"
	jwtTokenType = "urn:ietf:params:oauth:token-type:jwt"
)

func getenv(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// exchangeError is a refusal from the token endpoint (an OAuth error) or a transport failure.
type exchangeError struct {
	oauthError string // "invalid_grant", ...; empty for transport failures
	msg        string
}

func (e *exchangeError) Error() string { return e.msg }

// credentials holds the current flowgate credential and renews it.
type credentials struct {
	endpoint string
	http     *http.Client

	mu        sync.RWMutex
	token     string
	expiresAt time.Time
}

// discover reads the token endpoint from flowgate's OIDC discovery document.
func discover(ctx context.Context, hc *http.Client, gateway string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, gateway+"/.well-known/openid-configuration", nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("discovery: HTTP %d", resp.StatusCode)
	}
	var doc struct {
		TokenEndpoint string `json:"token_endpoint"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return "", fmt.Errorf("discovery: %w", err)
	}
	return doc.TokenEndpoint, nil
}

// exchange trades a subject token (a CI/workload OIDC token, or a still-valid flowgate
// credential) for a fresh credential with the worker's scope (RFC 8693).
func (c *credentials) exchange(ctx context.Context, subjectToken string) error {
	form := url.Values{
		"grant_type":         {grantType},
		"subject_token":      {subjectToken},
		"subject_token_type": {jwtTokenType},
		"scope":              {scope},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	sent := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return &exchangeError{msg: "token endpoint unreachable: " + err.Error()}
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken      string `json:"access_token"`
		ExpiresIn        int64  `json:"expires_in"`
		TokenType        string `json:"token_type"`
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return &exchangeError{msg: fmt.Sprintf("token endpoint: HTTP %d, unreadable body: %v", resp.StatusCode, err)}
	}
	if resp.StatusCode != http.StatusOK {
		return &exchangeError{oauthError: body.Error, msg: fmt.Sprintf(
			"token exchange refused (HTTP %d): %s: %s", resp.StatusCode, body.Error, body.ErrorDescription)}
	}
	if !strings.EqualFold(body.TokenType, "bearer") || body.AccessToken == "" || body.ExpiresIn <= 0 {
		return &exchangeError{msg: "token endpoint: unexpected response"}
	}
	c.mu.Lock()
	c.token = body.AccessToken
	// Counted from when the request was sent: never later than the server's clock.
	c.expiresAt = sent.Add(time.Duration(body.ExpiresIn) * time.Second)
	c.mu.Unlock()
	return nil
}

// current is the callback for client.NewAPIKeyDynamicCredentials: called on every request.
func (c *credentials) current(context.Context) (string, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if time.Now().After(c.expiresAt) {
		return "", errors.New("flowgate credential expired")
	}
	return c.token, nil
}

func (c *credentials) snapshot() (string, time.Time) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.token, c.expiresAt
}

// initialSubjectToken is the token the worker starts from.
func initialSubjectToken() (string, error) {
	if path := os.Getenv("FLOWGATE_SUBJECT_TOKEN_FILE"); path != "" {
		b, err := os.ReadFile(path)
		return strings.TrimSpace(string(b)), err
	}
	token := os.Getenv("CI_OIDC_TOKEN")
	if token == "" {
		return "", errors.New("set CI_OIDC_TOKEN, FLOWGATE_SUBJECT_TOKEN_FILE or FLOWGATE_SIDECAR")
	}
	os.Unsetenv("CI_OIDC_TOKEN") // single-use: keep it out of child processes
	return token, nil
}

// keepFresh re-exchanges the credential at about 2/3 of its remaining lifetime (with jitter),
// retries with backoff while it is still valid, and returns an error once it has expired.
// A chain of refreshes ends after the gateway's mint.max_session (default 12 h) with
// invalid_grant: then only a new subject token helps.
func (c *credentials) keepFresh(ctx context.Context) error {
	for {
		token, expiresAt := c.snapshot()
		remaining := time.Until(expiresAt)
		delay := time.Duration(float64(remaining) * (0.6 + 0.1*rand.Float64()))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(max(delay, time.Second)):
		}

		backoff := time.Second
		for {
			err := c.exchange(ctx, token)
			var refused *exchangeError
			if err != nil && errors.As(err, &refused) && refused.oauthError == "invalid_grant" &&
				os.Getenv("FLOWGATE_SUBJECT_TOKEN_FILE") != "" {
				// Start over from the projected token file (the kubelet rotates it).
				if fresh, ferr := initialSubjectToken(); ferr == nil {
					err = c.exchange(ctx, fresh)
				}
			}
			if err == nil {
				_, exp := c.snapshot()
				log.Printf("credential refreshed; valid for %s", time.Until(exp).Round(time.Second))
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			left := time.Until(expiresAt)
			if left <= 0 {
				return fmt.Errorf("flowgate credential expired: %w", err)
			}
			log.Printf("credential refresh failed (%v); %s of validity left", err, left.Round(time.Second))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(min(backoff, left)):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
	}
}

func main() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()

	options := client.Options{Namespace: namespace}
	refreshFailed := make(chan error, 1)

	if sidecar := os.Getenv("FLOWGATE_SIDECAR"); sidecar != "" {
		// The sidecar adds the credential and talks TLS to the gateway; the local hop is
		// plaintext h2c on loopback.
		options.HostPort = sidecar
	} else {
		hc := &http.Client{Timeout: 10 * time.Second}
		endpoint, err := discover(ctx, hc, getenv("FLOWGATE_URL", "https://flowgate.example.com"))
		if err != nil {
			log.Fatalln(err)
		}
		creds := &credentials{endpoint: endpoint, http: hc}
		subject, err := initialSubjectToken()
		if err != nil {
			log.Fatalln(err)
		}
		if err := creds.exchange(ctx, subject); err != nil {
			log.Fatalln(err)
		}
		go func() {
			if err := creds.keepFresh(ctx); err != nil {
				refreshFailed <- err
			}
		}()

		options.HostPort = getenv("TEMPORAL_ADDRESS", "flowgate.example.com:7233")
		options.Credentials = client.NewAPIKeyDynamicCredentials(creds.current)
		options.ConnectionOptions = client.ConnectionOptions{TLS: &tls.Config{MinVersion: tls.VersionTLS12}}
	}

	c, err := client.Dial(options)
	if err != nil {
		log.Fatalln("unable to connect:", err)
	}
	defer c.Close()

	w := worker.New(c, taskQueue, worker.Options{})
	w.RegisterWorkflow(deploys.DeployWorkflow)
	w.RegisterActivity(deploys.RunDeploy)

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
		log.Fatalln("worker:", err)
	}
	if fatal != nil {
		c.Close()
		os.Exit(1)
	}
}
